// Pressure measured by a running Ichidan: real signals driven past low configured thresholds — the
// event loop held busy in-process, real idle SMTP connections against a small maxClients, the real
// disk's free share against a floor set above it — seen as a level in the admin API
// (GET /v1/admission), `ichidan admission status`, the metrics and the log, and back down after
// `fall`; queue intake paused (MAIL FROM gets 452 4.3.1) and opened again by a reload;
// admission.mode off measures nothing.
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { adminRequest, adminSocket, parseConfig, startApp, waitUntil, type ConfigInput, type TestApp } from './helpers/app.js';
import { runCli } from './helpers/drain-world.js';
import { heldConfig } from './helpers/held-mail.js';
import { RawSmtp } from './helpers/raw-smtp.js';

type Pressure = NonNullable<ConfigInput['admission']>['pressure'];

/** Quick timing, and every signal out of the way unless a test lowers its threshold. */
const quiet = (extra: Pressure = {}): Pressure => ({
  interval: '100ms', rise: '300ms', fall: '1s', hysteresis: 0.2,
  eventLoopDelay: { busy: '10s', overload: '20s' },
  diskFree: { busy: 0, overload: 0 }, memoryFree: { busy: 0, overload: 0 },
  ...extra,
});

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('pressure in a running Ichidan', () => {
  let t: TestApp | undefined;
  const clients: RawSmtp[] = [];
  afterEach(async () => {
    for (const c of clients.splice(0)) c.close();
    await t?.stop();
    t = undefined;
  });

  const status = async () => (await adminRequest(adminSocket(t!.app.config), 'GET', '/v1/admission')).body as {
    mode: string; measuring: boolean; level: string; since: number; intake: string;
    signals: Record<string, { value: number | null; level: string; busy: number; overload: number; floor: boolean }>;
  };
  /** A sample from the registry GET /metrics serves (the API answers text; the registry is the same). */
  const metric = async (sample: string): Promise<number | null> => {
    const line = (await t!.app.metrics.metrics()).split('\n').find((l) => l.startsWith(sample + ' '));
    return line === undefined ? null : Number(line.slice(sample.length + 1));
  };
  const pressureLogs = () => t!.logs.filter((l) => typeof l.msg === 'string' && (l.msg as string).startsWith('pressure '));

  it('goes busy while the event loop is held, in the admin API, the metrics and the log, and back to normal after fall', async () => {
    t = await startApp((dir) => heldConfig(dir, { admission: { pressure: quiet({ eventLoopDelay: { busy: '60ms', overload: '10s' } }) } }));
    expect((await status()).level).toBe('normal');
    // Hold the event loop for 120 ms at a time until the level moves (at most 5 s).
    const until = Date.now() + 5000;
    while (t.app.pressure.level === 'normal' && Date.now() < until) {
      const spin = Date.now() + 120;
      while (Date.now() < spin) { /* the event loop is held */ }
      await sleep(5);
    }
    const busy = await status();
    expect(busy).toMatchObject({ mode: 'on', measuring: true, level: 'busy', intake: 'open' });
    expect(busy.signals.eventLoopDelay).toMatchObject({ level: 'busy', busy: 60, overload: 10_000, floor: false });
    expect(busy.signals.eventLoopDelay.value).toBeGreaterThanOrEqual(60);
    expect(await metric('ichidan_admission_level')).toBe(1);
    expect(await metric('ichidan_admission_level_changes_total{to="busy"}')).toBe(1);
    expect(pressureLogs().map((l) => [l.level, l.previous])).toEqual([['busy', 'normal']]);
    expect(pressureLogs()[0].msg).toMatch(/^pressure normal → busy: eventLoopDelay=\d+(\.\d+)? ≥ 60$/);
    expect(pressureLogs()[0].why).toMatch(/^eventLoopDelay=/);

    // The loop is free again: still busy before fall has passed, normal after it.
    await sleep(500);
    expect(t.app.pressure.level).toBe('busy');
    await waitUntil(() => t!.app.pressure.level === 'normal', 5000, 'the level to come back down');
    expect((await status()).level).toBe('normal');
    expect(await metric('ichidan_admission_level')).toBe(0);
    expect(await metric('ichidan_admission_level_changes_total{to="normal"}')).toBe(1);
    expect(pressureLogs().map((l) => [l.level, l.previous])).toEqual([['busy', 'normal'], ['normal', 'busy']]);
    expect(pressureLogs()[1].msg).toMatch(/^pressure busy → normal: eventLoopDelay=[\d.]+ below busy for 1000ms$/);
  });

  it('counts idle SMTP connections against the admission listeners\' maxClients, shown by ichidan admission status', async () => {
    t = await startApp((dir) => heldConfig(dir, {
      listeners: [{ name: 'mx', role: 'mx', port: 0, maxClients: 10 }, { name: 'submission', role: 'submission', port: 0, maxClients: 4 }],
      admission: { pressure: quiet({ sessions: { busy: 0.5, overload: 0.9 } }) },
    }));
    const file = join(t.dataDir, 'ichidan.yaml');
    await writeFile(file, JSON.stringify(heldConfig(t.dataDir)));
    // Connections on the submission listener do not count: it is not an admission listener.
    for (let i = 0; i < 4; i++) clients.push(await RawSmtp.open(t.port('submission'), '127.0.0.1', `127.0.0.${60 + i}`));
    await sleep(600);
    expect((await status()).signals.sessions).toMatchObject({ value: 0, level: 'normal' });
    for (let i = 0; i < 6; i++) {
      const c = await RawSmtp.open(t.port('mx'), '127.0.0.1', `127.0.0.${70 + i}`);
      clients.push(c);
      expect((await c.reply())[0]).toMatch(/^220 /);
    }
    await waitUntil(() => t!.app.pressure.level === 'busy', 5000, 'busy from the open sessions');
    const json = await runCli(['admission', 'status', '--json', '-c', file]);
    expect(json.code).toBe(0);
    expect(JSON.parse(json.stdout)).toMatchObject({ level: 'busy', intake: 'open', signals: { sessions: { value: 0.6, level: 'busy', busy: 0.5, overload: 0.9 } } });
    const human = await runCli(['admission', 'status', '-c', file]);
    expect(human.stdout).toMatch(/^mode on, level busy since \d{4}-\d\d-\d\dT[\d:]+Z, intake open\n/);
    expect(human.stdout).toMatch(/^sessions\t60%\t≥50%\t≥90%\tbusy$/m);
    expect(human.stdout).toMatch(/^diskFree\t[\d.]+%\t≤0%\t≤0%\tnormal$/m);
    expect(human.stdout).toMatch(/^scanWait\t-\t≥500ms\t≥3000ms\tnormal$/m);
    // The mx listener's known queue; the submission listener has none.
    expect(JSON.parse(json.stdout).knownQueues).toEqual([{ listener: 'mx', networks: expect.any(Number), left: 0, accepted: expect.any(Number), refusing: false, refused: 0, surges: 0 }]);
    expect(human.stdout).toMatch(/^known queue on mx: \d+ networks, \d+ connections taken, 0 refused at the socket$/m);
    // The scan slots: none in use, the reserve, and unknown senders' limit at its floor before any scan.
    expect(JSON.parse(json.stdout).scans).toEqual({ capacity: 32, reserved: 8, inUse: 0, waiting: { known: 0, unknown: 0 }, unknown: { inUse: 0, limit: 4, quickestMs: null } });
    expect(human.stdout).toMatch(/^scans: 0 of 32 \(8 kept for known senders\), 0 known and 0 unknown waiting; unknown senders' 0 of at most 4 at once$/m);
    expect(await metric('ichidan_admission_unknown_scans_limit')).toBe(4);
    expect(await metric('ichidan_admission_scans{priority="unknown"}')).toBe(0);
    expect(pressureLogs()[0].msg).toBe('pressure normal → busy: sessions=0.6 ≥ 0.5');
    expect(await metric('ichidan_admission_signal{signal="sessions"}')).toBe(0.6);
    expect(await metric('ichidan_admission_signal_level{signal="sessions"}')).toBe(1);
    expect(await metric('ichidan_admission_signal_level{signal="diskFree"}')).toBe(0);
    expect(await metric('ichidan_admission_signal{signal="scanWait"}')).toBeNull();

    for (const c of clients.splice(0)) c.close();
    await waitUntil(() => t!.app.pressure.level === 'normal', 5000, 'normal once the sessions closed');
    expect(pressureLogs()[1].msg).toBe('pressure busy → normal: sessions=0 below busy for 1000ms');

    // admission.listeners names the listeners counted (reloaded): now the submission listener's.
    const listeners = [{ name: 'mx', role: 'mx' as const, port: t.port('mx'), maxClients: 10 }, { name: 'submission', role: 'submission' as const, port: t.port('submission'), maxClients: 4 }];
    t.app.reconfigure(parseConfig(heldConfig(t.dataDir, { listeners, admission: { listeners: ['submission'], pressure: quiet({ sessions: { busy: 0.5, overload: 0.9 } }) } }), 'test'));
    for (let i = 0; i < 3; i++) clients.push(await RawSmtp.open(t.port('submission'), '127.0.0.1', `127.0.0.${60 + i}`));
    await waitUntil(async () => (await status()).signals.sessions.value === 0.75, 5000, 'the submission listener\'s sessions counted');
  });

  it('pauses queue intake while free disk is at its overload floor (452 4.3.1 at MAIL FROM), opens it again on a reload, and times the spool\'s fsyncs', async () => {
    const build = (dir: string, pressure: Pressure) => heldConfig(dir, { trustedNetworks: ['127.0.0.80/32'], admission: { pressure } });
    // Floors above the real disk's free share: the signal is past them at once.
    t = await startApp((dir) => build(dir, quiet({ diskFree: { busy: 0.99999, overload: 0.9999 } })));
    await waitUntil(() => t!.app.pressure.intake() === 'paused', 5000, 'intake to pause');
    const paused = await status();
    expect(paused.intake).toBe('paused');
    expect(paused.signals.diskFree).toMatchObject({ level: 'overload', floor: true, overload: 0.9999 });
    expect(paused.signals.diskFree.value).toBeLessThan(0.9999);
    expect(t.logs.find((l) => l.intake === 'paused')?.msg).toMatch(/^queue intake paused \(new mail is refused with 452 4\.3\.1\): diskFree=[\d.]+ ≤ 0\.9999$/);
    await waitUntil(() => t!.app.pressure.level === 'overload', 5000, 'overload after rise');
    // The door reads the level: an unknown sender is refused at connect.
    const unknown = await RawSmtp.open(t.port('mx'));
    clients.push(unknown);
    expect((await unknown.reply())[0]).toMatch(/^421 4\.7\.0 /);

    // Paused: new mail is refused at MAIL FROM, also from a known (trusted) sender the door lets in at overload.
    const known = await RawSmtp.open(t.port('mx'), '127.0.0.1', '127.0.0.80');
    clients.push(known);
    expect((await known.reply())[0]).toMatch(/^220 /);
    await known.command('EHLO client.test');
    expect(await known.command('MAIL FROM:<x@remote.test>')).toMatch(/^452 4\.3\.1 /);
    expect(await metric('ichidan_spool_fsync_seconds_count')).toBe(0);

    t.app.reconfigure(parseConfig(build(t.dataDir, quiet()), 'test'));
    await waitUntil(() => t!.app.pressure.intake() === 'open', 5000, 'intake to open after the reload');
    expect(t.logs.find((l) => l.intake === 'open')?.msg).toMatch(/^queue intake open again: diskFree=[\d.]+, memoryFree=[\d.]+$/);
    // Open again: the same session's next transaction is taken, and the sync that makes it durable
    // before its 250 (the spool journal's fdatasync, queue/queue-journal.ts) is timed.
    expect(await known.command('MAIL FROM:<x@remote.test>')).toMatch(/^250 /);
    expect(await known.command('RCPT TO:<ann@alpha.test>')).toMatch(/^250 /);
    expect(await known.command('DATA')).toMatch(/^354 /);
    expect(await known.finishData('Subject: intake\r\n\r\nhello\r\n')).toMatch(/^\w+$/);
    expect(await metric('ichidan_spool_fsync_seconds_count')).toBeGreaterThanOrEqual(1);
    expect((await status()).signals.diskFree).toMatchObject({ level: 'normal', busy: 0, overload: 0 });
  });

  it('measures nothing with admission.mode off, and starts measuring when a reload turns it on', async () => {
    const build = (dir: string, mode: 'on' | 'off') => heldConfig(dir, { admission: { mode, pressure: quiet({ sessions: { busy: 0, overload: 0 } }) } });
    t = await startApp((dir) => build(dir, 'off'));
    await sleep(500);
    expect(await status()).toMatchObject({ mode: 'off', measuring: false, level: 'normal', intake: 'open' });
    expect((await status()).signals.sessions.value).toBeNull();
    expect(await metric('ichidan_admission_level')).toBe(0);
    t.app.reconfigure(parseConfig(build(t.dataDir, 'on'), 'test'));
    // sessions at 0 of 1000 reaches a threshold of 0: overload after rise.
    await waitUntil(() => t!.app.pressure.level === 'overload', 5000, 'overload once measured');
    expect(await status()).toMatchObject({ mode: 'on', measuring: true, level: 'overload' });
    t.app.reconfigure(parseConfig(build(t.dataDir, 'off'), 'test'));
    expect(await status()).toMatchObject({ mode: 'off', measuring: false, level: 'normal' });
  });
});
