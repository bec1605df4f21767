// Nested content and archive bombs through both AV paths (clamd, and c-icap backed by clamd), with
// the recommended clamd limits of scripts/clamd-limits.conf: refused as not fully scanned, never
// passed as clean and never reported as a virus named after the limit.
import Database from 'better-sqlite3';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import nodemailer from 'nodemailer';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { readQuarantine } from '../queue/queue-store-sql.js';
import { baseConfig, startApp, type ConfigInput, type TestApp } from './helpers/app.js';
import { EICAR } from './helpers/engine-contract.js';
import { attachmentMail, EICAR_FILE, nestedMail } from './helpers/padded-mail.js';
import { startPrivateClamd, type PrivateClamd } from './helpers/private-clamd.js';
import { startPrivateIcap, type PrivateIcap } from './helpers/private-icap.js';
import { startSink, type Sink } from './helpers/sink.js';
import { manyFilesZip, nestedZip, ratioBomb, zip } from './helpers/zip-bomb.js';

async function send(t: TestApp, raw: string): Promise<string> {
  const tx = nodemailer.createTransport({ host: '127.0.0.1', port: t.port('mx'), ignoreTLS: true });
  try {
    return (await tx.sendMail({ envelope: { from: 'mallory@sender.test', to: ['bob@example.test'] }, raw })).response;
  } catch (err) {
    return (err as { response?: string }).response ?? String(err);
  } finally {
    tx.close();
  }
}

const eicar = { name: 'eicar.com', data: Buffer.from(EICAR) };
const zipped = (name: string, body: Buffer) => attachmentMail({ name, type: 'application/zip', body });

const NOT_FULLY = (engine: string, limit: string) =>
  new RegExp(`^550 5\\.7\\.1 message refused: content could not be fully scanned \\(${engine}: limit of the scanner exceeded \\(Heuristics\\.Limits\\.Exceeded\\.${limit}\\)\\)`);

describe('nested content and archive bombs, real clamd and c-icap with the recommended limits', () => {
  let clamd: PrivateClamd;
  let icap: PrivateIcap;
  let sink: Sink;
  let t: TestApp | undefined;

  beforeAll(async () => {
    clamd = await startPrivateClamd();
    icap = await startPrivateIcap(clamd);
    sink = await startSink({ host: '127.0.0.2' });
  }, 60_000);
  afterEach(async () => { await t?.stop(); t = undefined; });
  afterAll(async () => {
    await icap?.stop();
    await clamd?.stop();
    await sink?.close();
  });

  const paths = () => ({
    clamav: { name: 'clamav', type: 'clamd' as const, servers: [{ host: clamd.host, port: clamd.port }] },
    icap: { name: 'icap', type: 'icap' as const, server: { host: icap.host, port: icap.port }, service: icap.service },
  });
  const config = (engine: 'clamav' | 'icap', extra: Partial<ConfigInput> = {}) => (dir: string) => baseConfig(dir, {
    tenants: { demo: { domains: ['example.test'] } },
    routes: { 'example.test': { host: '127.0.0.2', port: sink.port } },
    engines: [paths()[engine]],
    ...extra,
  });

  for (const engine of ['clamav', 'icap'] as const) {
    it(`${engine}: EICAR 20 MIME levels deep is refused by Ichidan's own limit, and by the engine's when that is raised`, async () => {
      t = await startApp(config(engine));
      expect(await send(t, nestedMail(EICAR_FILE, 20))).toMatch(/^550 5\.6\.0 message refused: MIME nesting deeper than 16 levels/);
      await t.stop();
      t = await startApp(config(engine, { limits: { maxMimeDepth: 40 } }));
      expect(await send(t, nestedMail(EICAR_FILE, 20))).toMatch(NOT_FULLY(engine, 'MaxRecursion'));
      // Within the engine's reach the virus is still a virus.
      expect(await send(t, nestedMail(EICAR_FILE, 10))).toMatch(/^550 5\.7\.1 message refused: virus found \(Private-Eicar/);
    });

    it(`${engine}: archive bombs are refused as not fully scanned, ordinary archives pass, its breaker stays closed`, async () => {
      t = await startApp(config(engine));
      expect(await send(t, zipped('zeros.zip', ratioBomb(500_000_000)))).toMatch(NOT_FULLY(engine, 'MaxScanSize'));
      expect(await send(t, zipped('deep.zip', nestedZip(eicar, 30)))).toMatch(NOT_FULLY(engine, 'MaxRecursion'));
      expect(await send(t, zipped('many.zip', manyFilesZip(12_000, eicar)))).toMatch(NOT_FULLY(engine, 'MaxFiles'));
      expect(await send(t, zipped('virus.zip', nestedZip(eicar, 5)))).toMatch(/^550 5\.7\.1 message refused: virus found \(Private-Eicar/);
      expect(await send(t, zipped('reports.zip', zip([{ name: 'report.txt', data: Buffer.alloc(2_000_000, 'quarterly figures ') }])))).toMatch(/^250 /);
      expect(t.app.engines.list()[0]).toMatchObject({ breaker: 'closed', failures: 0 });
    }, 60_000);

    it(`${engine}: clam_cache_emax.tgz of clamav-testfiles (tgz in tgz) mailed as an attachment is refused, not passed as clean`, async () => {
      // Scanned alone clamd reaches the test file; inside a message it sits past MaxRecursion, where
      // clamd without AlertExceedsMax answered OK: the one of the 44 test files that used to pass.
      t = await startApp(config(engine));
      const file = readFileSync('/usr/share/clamav-testfiles/clam_cache_emax.tgz');
      expect(await send(t, attachmentMail({ name: 'clam_cache_emax.tgz', type: 'application/gzip', body: file }))).toMatch(NOT_FULLY(engine, 'MaxRecursion'));
    });
  }

  it('quarantines a bomb when scanning.unscannable says so', async () => {
    t = await startApp(config('clamav', { scanning: { unscannable: 'quarantine' } }));
    expect(await send(t, zipped('zeros.zip', ratioBomb(500_000_000)))).toMatch(/^250 /);
    const db = new Database(join(t.dataDir, 'queue.db'), { readonly: true });
    try {
      expect(readQuarantine(db)[0].quarantine).toBe('not fully scanned by clamav: limit of the scanner exceeded (Heuristics.Limits.Exceeded.MaxScanSize)');
    } finally {
      db.close();
    }
  });
});
