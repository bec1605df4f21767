// No sender can open an engine's circuit breaker with messages the engine cannot judge (unparseable,
// too slow to judge, past the structure limits); failures of the engine itself still open it.
import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { demoConfig, startApp, waitUntil, type ConfigInput, type TestApp } from './helpers/app.js';
import { closedPort, startFakeServer, type FakeServer } from './helpers/engine-contract.js';
import { fakeClamd } from './helpers/fake-clamd.js';
import { attachmentMail, EXE, nestedMail, paddingHeaders, slowMail } from './helpers/padded-mail.js';
import { sendRaw } from './helpers/send-raw.js';
import { startSink, type Sink } from './helpers/sink.js';

const send = (t: TestApp, raw: string) => sendRaw(t, raw, { from: 'mallory@sender.test' });
const POLICY = { name: 'attachments', type: 'policy' as const };

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
  const config = (extra: Partial<ConfigInput>) => demoConfig(sink, { limits: wide, ...extra });

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
