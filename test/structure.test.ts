// Structure past Ichidan's own limits is a verdict about the message, with or without engines,
// and no sender can open an engine's circuit breaker with messages the engine cannot judge.
import Database from 'better-sqlite3';
import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import nodemailer from 'nodemailer';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { ConfigInput } from '../mta/mta-config-schema.js';
import { readQuarantine } from '../queue/queue-store-sql.js';
import { baseConfig, startApp, waitUntil, type TestApp } from './helpers/app.js';
import { closedPort, startFakeServer, type FakeServer } from './helpers/engine-contract.js';
import { fakeClamd } from './helpers/fake-clamd.js';
import { attachmentMail, EXE, nestedMail, paddingHeaders, slowMail } from './helpers/padded-mail.js';
import { startSink, type Sink } from './helpers/sink.js';

async function send(t: TestApp, raw: string): Promise<{ ok: boolean; reply: string }> {
  const tx = nodemailer.createTransport({ host: '127.0.0.1', port: t.port('mx'), ignoreTLS: true });
  try {
    const info = await tx.sendMail({ envelope: { from: 'mallory@sender.test', to: ['bob@example.test'] }, raw });
    return { ok: true, reply: info.response };
  } catch (err) {
    return { ok: false, reply: (err as { response?: string }).response ?? String(err) };
  } finally {
    tx.close();
  }
}

const POLICY = { name: 'attachments', type: 'policy' as const };

/** Padded messages carrying a blocked .exe, each past one of the default limits. */
const PADDED: Array<[string, () => string, RegExp]> = [
  ['a 1.2 MB header block', () => attachmentMail(EXE, { extraHeaders: paddingHeaders(20_000) }), /^550 5\.6\.0 message refused: a header block larger than 262144 bytes/],
  ['1,200 header fields of 10 bytes', () => attachmentMail(EXE, { extraHeaders: paddingHeaders(1_200, 10) }), /^550 5\.6\.0 message refused: more than 1000 header fields in one header block/],
  ['1,200 MIME parts', () => attachmentMail(EXE, { padding: 1_200 }), /^550 5\.6\.0 message refused: more than 500 MIME parts/],
  ['30 nested multiparts', () => nestedMail(EXE, 30), /^550 5\.6\.0 message refused: MIME nesting deeper than 16 levels/],
  ['30 levels of forwarded messages and multiparts', () => nestedMail(EXE, 30, 'rfc822'), /^550 5\.6\.0 message refused: MIME nesting deeper than 16 levels/],
];

describe('structure past limits: refused with or without engines', () => {
  let sink: Sink;
  let t: TestApp | undefined;
  beforeAll(async () => { sink = await startSink({ host: '127.0.0.2' }); });
  afterEach(async () => { await t?.stop(); t = undefined; });
  afterAll(async () => { await sink?.close(); });

  const config = (extra: Partial<ConfigInput>) => (dir: string) => baseConfig(dir, {
    tenants: { demo: { domains: ['example.test'] } },
    routes: { 'example.test': { host: '127.0.0.2', port: sink.port } },
    ...extra,
  });

  for (const [label, engines] of [['no engine configured', []], ['the policy engine configured', [POLICY]]] as const) {
    it(`refuses each padded .exe with 550 5.6.0 and keeps nothing (${label}); mail within the limits still passes`, async () => {
      t = await startApp(config({ engines: [...engines] }));
      for (const [what, build, reply] of PADDED) {
        const res = await send(t, build());
        expect(res.ok, `${what}: ${res.reply}`).toBe(false);
        expect(res.reply, what).toMatch(reply);
      }
      expect((await readdir(join(t.dataDir, 'spool'))).filter((f) => f !== 'corrupt')).toEqual([]);
      // Just inside every limit: a deep but legal nesting, many parts, a large header block.
      const fine = await send(t, nestedMail({ name: 'report.pdf', body: '%PDF-1.4' }, 16, 'rfc822'));
      expect(fine.reply).toMatch(/^250 /);
      const many = await send(t, attachmentMail({ name: 'report.pdf', body: '%PDF-1.4' }, { padding: 400, extraHeaders: paddingHeaders(900, 100) }));
      expect(many.reply).toMatch(/^250 /);
    });
  }

  it('quarantines instead when scanning.unscannable says so, with or without engines (an .exe the policy engine finds is still refused)', async () => {
    for (const engines of [[], [POLICY]]) {
      t = await startApp(config({ engines, scanning: { unscannable: 'quarantine' } }));
      const res = await send(t, nestedMail({ name: 'report.pdf', body: '%PDF-1.4' }, 30));
      expect(res.reply).toMatch(/^250 /);
      const db = new Database(join(t.dataDir, 'queue.db'), { readonly: true });
      try {
        const [q] = readQuarantine(db);
        expect(q.quarantine).toBe('structure: MIME nesting deeper than 16 levels');
      } finally {
        db.close();
      }
      const exe = await send(t, nestedMail(EXE, 30));
      expect(exe.reply).toMatch(engines.length ? /^550 5\.7\.1 message refused: attachment "setup\.exe"/ : /^250 /);
      await t.stop();
      t = undefined;
    }
  });

  it('names the key of a bad limit', () => {
    expect(() => config({ limits: { maxMimeDepth: 0 } })('/tmp')).not.toThrow();
    return import('../mta/index.js').then(({ parseConfig }) => {
      expect(() => parseConfig(baseConfig('/tmp', { limits: { maxMimeDepth: 0 } }), 'test')).toThrow(/limits\.maxMimeDepth/);
      expect(() => parseConfig(baseConfig('/tmp', { scanning: { unscannable: 'accept' as never } }), 'test')).toThrow(/scanning\.unscannable/);
    });
  });
});

describe('a sender cannot open an engine\'s circuit breaker', () => {
  let sink: Sink;
  let hang: FakeServer;
  let t: TestApp | undefined;
  beforeAll(async () => {
    sink = await startSink({ host: '127.0.0.2' });
    hang = await startFakeServer(fakeClamd);
    hang.behaviour = 'hang';
  });
  afterEach(async () => { await t?.stop(); t = undefined; });
  afterAll(async () => { await Promise.all([sink?.close(), hang?.close()]); });

  const breaker = { failures: 3, window: '60s', cooldown: '10m' };
  // Ichidan's own limits raised above the policy engine's, so the engine meets the padding itself.
  const wide = { maxHeaderSize: '8MB', maxHeaderFields: 100_000, maxMimeParts: 5_000 } as const;
  const config = (extra: Partial<ConfigInput>) => (dir: string) => baseConfig(dir, {
    tenants: { demo: { domains: ['example.test'] } },
    routes: { 'example.test': { host: '127.0.0.2', port: sink.port } },
    limits: wide,
    ...extra,
  });

  it('ten messages the policy engine cannot parse are refused, its breaker stays closed, and the next .exe is refused', async () => {
    t = await startApp(config({ engines: [{ ...POLICY, breaker }] }));
    for (let n = 0; n < 10; n++) {
      const res = await send(t, n % 2 ? attachmentMail(EXE, { padding: 1_200 }) : attachmentMail(EXE, { extraHeaders: paddingHeaders(20_000) }));
      expect(res.reply).toMatch(/^550 5\.7\.1 message refused: content could not be fully scanned \(attachments: unparseable MIME/);
    }
    const [info] = t.app.engines.list();
    expect(info).toMatchObject({ name: 'attachments', breaker: 'closed', failures: 0 });
    const exe = await send(t, attachmentMail(EXE));
    expect(exe.reply).toMatch(/^550 5\.7\.1 message refused: attachment "setup\.exe": blocked extension \.exe/);
  });

  it('messages too slow for the policy engine\'s deadline are refused, its breaker stays closed, and the next .exe is refused', async () => {
    // The engine works alone on the message, in this process: running out of time is the message's doing.
    t = await startApp(config({ limits: {}, engines: [{ ...POLICY, timeout: '25ms', breaker }] }));
    const slow = slowMail();
    for (let n = 0; n < 2 * breaker.failures; n++) {
      const res = await send(t, slow);
      expect(res.reply, `message ${n + 1}`).toMatch(/^550 5\.7\.1 message refused: content could not be fully scanned \(attachments: not judged within its timeout of 25 ms/);
    }
    expect(t.app.engines.list()[0]).toMatchObject({ name: 'attachments', breaker: 'closed', failures: 0 });
    const exe = await send(t, attachmentMail(EXE));
    expect(exe.reply).toMatch(/^550 5\.7\.1 message refused: attachment "setup\.exe": blocked extension \.exe/);
    expect((await readdir(join(t.dataDir, 'spool'))).filter((f) => f !== 'corrupt')).toEqual([]);
  });

  it('messages past the structure limits, quarantined and still scanned, never count against a breaker', async () => {
    t = await startApp(config({
      limits: {},
      engines: [{ name: 'hangs', type: 'clamd', servers: [{ host: hang.host, port: hang.port }], timeout: '300ms', breaker }],
      scanning: { unscannable: 'quarantine' },
    }));
    for (let n = 0; n < 2 * breaker.failures; n++) expect((await send(t, nestedMail({ name: 'report.pdf', body: '%PDF-1.4' }, 30))).reply).toMatch(/^250 /);
    expect(t.app.engines.list()[0]).toMatchObject({ breaker: 'closed', failures: 0 });
  });

  it('failures of the engine itself still open it: a daemon that is down, one that hangs', async () => {
    const down = await closedPort();
    t = await startApp(config({
      engines: [
        { name: 'down', type: 'clamd', servers: [{ host: '127.0.0.1', port: down }], timeout: '300ms', breaker },
        { name: 'hangs', type: 'clamd', servers: [{ host: hang.host, port: hang.port }], timeout: '300ms', breaker },
      ],
      scanning: { belowQuorum: 'accept' },
    }));
    for (let n = 0; n < breaker.failures; n++) await send(t, attachmentMail({ name: 'report.pdf', body: '%PDF-1.4' }));
    await waitUntil(() => t!.app.engines.list().every((e) => e.breaker === 'open'), 10_000, 'both breakers to open');
  });
});
