// Runtime engine control under continuous traffic: hot swap by reload, circuit breakers with a
// real clamd killed and restarted, fakes that hang or answer garbage, operator switches from the CLI.
import Database from 'better-sqlite3';
import { execFile } from 'node:child_process';
import { request } from 'node:http';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { stringify } from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ConfigInput } from '../mta/mta-config-schema.js';
import { readEngineEvents } from '../queue/queue-records-sql.js';
import { baseConfig, startApp, waitUntil, type TestApp } from './helpers/app.js';
import { startChild, type ChildIchidan } from './helpers/child.js';
import { realDaemon } from './helpers/daemons.js';
import { CLEAN_MAIL, startFakeServer, type FakeServer } from './helpers/engine-contract.js';
import { fakeClamd } from './helpers/fake-clamd.js';
import { startLoad, type Sent } from './helpers/load.js';
import { startPrivateClamd, type PrivateClamd } from './helpers/private-clamd.js';
import { RawSmtp } from './helpers/raw-smtp.js';
import { startSink, type Sink } from './helpers/sink.js';

const exec = promisify(execFile);
const CLI = join(import.meta.dirname, '..', 'dist', 'mta', 'mta-main.js');
const clamd = realDaemon('clamd');
const rspamd = realDaemon('rspamd');

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

interface ScanRow { queue_id: string; at: number; ms: number; action: string; generation: number; runs: string }

function scans(dataDir: string): Array<ScanRow & { engines: string[]; parsed: Array<{ engine: string; status: string; skipped?: string; error?: string }> }> {
  const db = new Database(join(dataDir, 'queue.db'), { readonly: true });
  try {
    return (db.prepare('SELECT * FROM scans ORDER BY at').all() as ScanRow[]).map((r) => {
      const parsed = JSON.parse(r.runs) as Array<{ engine: string; status: string; skipped?: string; error?: string }>;
      return { ...r, parsed, engines: parsed.map((p) => p.engine).sort() };
    });
  } finally {
    db.close();
  }
}

function events(dataDir: string) {
  const db = new Database(join(dataDir, 'queue.db'), { readonly: true });
  try {
    return readEngineEvents(db, 10_000).reverse();
  } finally {
    db.close();
  }
}

/** Every accepted message arrived at the sink (by its unique subject). */
function lost(sent: Sent[], sink: Sink): Sent[] {
  const arrived = new Set(sink.messages.map((m) => /\r\nSubject: (load-\d+)\r\n/.exec(m.data.toString())?.[1]));
  return sent.filter((s) => s.code === 250 && !arrived.has(s.subject));
}

async function waitDelivered(sent: Sent[], sink: Sink): Promise<void> {
  await waitUntil(() => lost(sent, sink).length === 0, 30_000, 'every accepted message to arrive');
}

function summary(label: string, sent: Sent[], extra: Record<string, unknown> = {}): void {
  const accepted = sent.filter((s) => s.code === 250).length;
  const tempfailed = sent.filter((s) => s.code !== null && s.code >= 400 && s.code < 500).length;
  const refused = sent.filter((s) => s.code !== null && s.code >= 500).length;
  const broken = sent.filter((s) => s.code === null).length;
  console.log(`${label}: ${sent.length} transactions, ${accepted} accepted, ${tempfailed} tempfailed, ${refused} refused, ${broken} failed at the connection`, extra);
}

describe.skipIf(!clamd || !rspamd)('hot swap by reload under continuous traffic (real daemons; skipped unless scripts/engines.sh start has run)', () => {
  let sink: Sink;
  let second: PrivateClamd;
  let t: TestApp;
  let dataDir: string;

  beforeAll(async () => {
    sink = await startSink({ host: '127.0.0.2' });
    second = await startPrivateClamd();
    dataDir = await mkdtemp(join(tmpdir(), 'ichidan-test-'));
  });
  afterAll(async () => {
    await t?.stop();
    await Promise.all([sink?.close(), second?.stop()]);
    await rm(dataDir, { recursive: true, force: true });
  });

  it('removes rspamd and adds a second clamd, then changes thresholds: no transaction fails, each message scanned by its snapshot\'s engines', async () => {
    const base = (engines: ConfigInput['engines'], scanning: ConfigInput['scanning'] = {}) => baseConfig(dataDir, {
      tenants: { demo: { domains: ['example.test'] } },
      routes: { 'example.test': { host: '127.0.0.2', port: sink.port } },
      engines, scanning,
    });
    const gen1 = [
      { name: 'clamav', type: 'clamd' as const, servers: [{ host: clamd!.host, port: clamd!.port }] },
      { name: 'rspamd', type: 'rspamd' as const, url: `http://${rspamd!.host}:${rspamd!.port}` },
    ];
    const gen2 = [gen1[0], { name: 'clamav-2', type: 'clamd' as const, servers: [{ host: second.host, port: second.port }] }];
    const file = join(dataDir, 'ichidan.yaml');
    await writeFile(file, stringify(base(gen1)));
    t = await startApp(() => base(gen1), { dataDir });
    t.app.configFile = file;

    const load = startLoad(t.port('mx'), { senders: 4 });
    await sleep(1_500);
    await writeFile(file, stringify(base(gen2)));
    expect(t.app.reload()).toEqual({ ok: true, generation: 2, needsRestart: [] });
    await sleep(1_500);
    // A bad file changes nothing and names the key.
    await writeFile(file, stringify({ ...base(gen2), scanning: { spam: { tag: 'high' } } }));
    const bad = t.app.reload();
    expect(bad.ok).toBe(false);
    expect((bad as { problems: string[] }).problems.join('\n')).toContain('scanning.spam.tag');
    expect(t.app.generation).toBe(2);
    await writeFile(file, stringify(base(gen2, { spam: { tag: 0.3 } })));
    expect(t.app.reload()).toMatchObject({ ok: true, generation: 3 });
    await sleep(1_500);
    const sent = await load.stop();
    summary('hot swap', sent);

    expect(sent.filter((s) => s.code !== 250)).toEqual([]);
    await waitDelivered(sent, sink);
    await waitUntil(() => scans(dataDir).length >= sent.length, 10_000, 'every scan record');
    const rows = scans(dataDir);
    const expected: Record<number, string[]> = { 1: ['clamav', 'rspamd'], 2: ['clamav', 'clamav-2'], 3: ['clamav', 'clamav-2'] };
    for (const r of rows) expect(r.engines, `message ${r.queue_id} of generation ${r.generation}`).toEqual(expected[r.generation]);
    for (const r of rows) expect(r.parsed.every((p) => p.status === 'clean'), JSON.stringify(r.parsed)).toBe(true);
    const perGeneration = [1, 2, 3].map((g) => rows.filter((r) => r.generation === g).length);
    console.log('messages scanned per generation', perGeneration);
    for (const n of perGeneration) expect(n).toBeGreaterThan(0);
    // rspamd was drained and closed once no transaction held the first snapshot; clamav carried over.
    await waitUntil(() => events(dataDir).some((e) => e.engine === 'rspamd' && e.event === 'closed'), 5_000, 'rspamd closed');
    const log = events(dataDir).map((e) => `${e.engine} ${e.event}`);
    expect(log).toEqual(expect.arrayContaining(['clamav added', 'rspamd added', 'clamav-2 added', 'rspamd removed', 'rspamd closed']));
    expect(log).not.toContain('clamav replaced');
    expect(log).not.toContain('clamav closed');
  });
});

describe('circuit breaker with a real clamd killed and restarted under traffic', () => {
  let sink: Sink;
  let av: PrivateClamd;
  let t: TestApp;

  beforeAll(async () => {
    sink = await startSink({ host: '127.0.0.2' });
    av = await startPrivateClamd();
  });
  afterAll(async () => {
    await t?.stop();
    await Promise.all([sink?.close(), av?.stop()]);
  });

  it('opens within N failures, keeps mail flowing under the tempfail policy with nothing lost, closes after clamd returns', async () => {
    const FAILURES = 3;
    t = await startApp((dir) => baseConfig(dir, {
      tenants: { demo: { domains: ['example.test'] } },
      routes: { 'example.test': { host: '127.0.0.2', port: sink.port } },
      engines: [{ name: 'clamav', type: 'clamd', servers: [{ host: av.host, port: av.port }], timeout: '2s', breaker: { failures: FAILURES, window: '10s', cooldown: '1s' } }],
      scanning: { belowQuorum: 'tempfail' },
    }));
    const load = startLoad(t.port('mx'), { senders: 4 });
    await sleep(1_000);
    const killedAt = Date.now();
    await av.kill();
    await waitUntil(() => t.app.engines.list()[0].breaker === 'open', 10_000, 'the breaker to open');
    const openedAt = Date.now();
    await sleep(1_500);
    const restartedAt = Date.now();
    await av.start();
    await waitUntil(() => t.app.engines.list()[0].breaker === 'closed', 10_000, 'the breaker to close');
    const closedAt = Date.now();
    await sleep(1_000);
    const sent = await load.stop();

    const lostOnes = (await waitDelivered(sent, sink).then(() => [], () => lost(sent, sink)));
    const tempfailed = sent.filter((s) => s.code === 451);
    summary('clamd SIGKILL', sent, { lost: lostOnes.length, timeToOpenMs: openedAt - killedAt, timeToCloseMs: closedAt - restartedAt });
    expect(lostOnes).toEqual([]);
    expect(sent.filter((s) => s.code !== 250 && s.code !== 451)).toEqual([]);
    expect(tempfailed.length).toBeGreaterThan(0);
    expect(tempfailed.every((s) => /^451 4\.7\.1 /.test(s.reply))).toBe(true);
    expect(sent.filter((s) => s.code === 250 && s.at > closedAt + 100).length).toBeGreaterThan(0);
    // No transaction waited much past the engine's deadline, the daemon dying mid-scan included.
    expect(Math.max(...sent.map((s) => s.ms))).toBeLessThan(2_000 + 1_500);
    // At most N failed scans decided the opening (plus the ones already in flight from the other senders).
    const rows = scans(t.dataDir);
    // Records are written just after each scan ends: count the failures recorded up to shortly after the
    // breaker's own transition time (the scans still in flight then are the other senders').
    const openEvent = events(t.dataDir).find((e) => e.event === 'breaker' && e.to_state === 'open')!;
    const failedBeforeOpen = rows.filter((r) => r.at <= openEvent.at + 100 && r.parsed[0]?.status === 'error').length;
    expect(failedBeforeOpen).toBeGreaterThanOrEqual(FAILURES);
    expect(failedBeforeOpen).toBeLessThanOrEqual(FAILURES + 4);
    expect(rows.filter((r) => r.parsed[0]?.skipped === 'disabled').length).toBeGreaterThan(0);
    const transitions = events(t.dataDir).filter((e) => e.event === 'breaker').map((e) => `${e.from_state}>${e.to_state}`);
    expect(transitions.slice(0, 1)).toEqual(['closed>open']);
    expect(transitions.at(-1)).toBe('half-open>closed');
    expect(openedAt - killedAt).toBeLessThan(5_000);
    expect(closedAt - restartedAt).toBeLessThan(1_000 + 2_000);
    const text = await new Promise<string>((resolve, reject) => {
      request({ socketPath: join(t.dataDir, 'admin.sock'), path: '/metrics' }, (res) => {
        let body = '';
        res.on('data', (d) => { body += d; });
        res.on('end', () => resolve(body));
      }).on('error', reject).end();
    });
    expect(text).toMatch(/ichidan_engine_events_total\{engine="clamav",event="breaker",to="open"\} [1-9]/);
    expect(text).toMatch(/ichidan_engine_up\{engine="clamav",breaker="closed",state="enabled"\} 1/);
  });
});

describe.skipIf(!clamd)('fakes that hang or answer garbage (real daemons; skipped unless scripts/engines.sh start has run)', () => {
  let sink: Sink;
  let hang: FakeServer;
  let garbage: FakeServer;
  let t: TestApp;

  beforeAll(async () => {
    sink = await startSink({ host: '127.0.0.2' });
    hang = await startFakeServer(fakeClamd);
    hang.behaviour = 'hang';
    garbage = await startFakeServer(fakeClamd);
    garbage.behaviour = 'garbage';
  });
  afterAll(async () => {
    await t?.stop();
    await Promise.all([sink?.close(), hang?.close(), garbage?.close()]);
  });

  it('both end up open; no transaction is held past the deadline', async () => {
    const breaker = { failures: 2, window: '30s', cooldown: '10m' };
    t = await startApp((dir) => baseConfig(dir, {
      tenants: { demo: { domains: ['example.test'] } },
      routes: { 'example.test': { host: '127.0.0.2', port: sink.port } },
      engines: [
        { name: 'clamav', type: 'clamd', servers: [{ host: clamd!.host, port: clamd!.port }] },
        { name: 'hangs', type: 'clamd', servers: [{ host: hang.host, port: hang.port }], timeout: '400ms', breaker },
        { name: 'garbage', type: 'clamd', servers: [{ host: garbage.host, port: garbage.port }], timeout: '400ms', breaker },
      ],
    }));
    const load = startLoad(t.port('mx'), { senders: 2 });
    await waitUntil(() => t.app.engines.list().filter((e) => e.breaker === 'open').length === 2, 10_000, 'both breakers to open');
    const openedAt = Date.now();
    await sleep(500);
    const sent = await load.stop();
    summary('hang + garbage', sent);
    expect(sent.filter((s) => s.code !== 250)).toEqual([]);
    expect(Math.max(...sent.map((s) => s.ms))).toBeLessThan(400 + 600);
    const byName = Object.fromEntries(t.app.engines.list().map((e) => [e.name, e]));
    expect(byName.hangs).toMatchObject({ breaker: 'open' });
    expect(byName.hangs.lastError).toMatch(/^timeout/);
    expect(byName.garbage).toMatchObject({ breaker: 'open' });
    expect(byName.garbage.lastError).toMatch(/^protocol/);
    expect(byName.clamav).toMatchObject({ breaker: 'closed' });
    // Scans that started once both were open skip them at once (recorded as disabled): no message waits for them.
    const after = scans(t.dataDir).filter((r) => r.at - r.ms > openedAt);
    expect(after.length).toBeGreaterThan(0);
    for (const r of after) {
      for (const name of ['hangs', 'garbage']) expect(r.parsed.find((p) => p.engine === name)).toMatchObject({ status: 'skipped', skipped: 'disabled' });
    }
    await waitDelivered(sent, sink);
  });
});

describe.skipIf(!clamd || !rspamd)('operator switches from the CLI while traffic flows (real daemons; skipped unless scripts/engines.sh start has run)', () => {
  let sink: Sink;
  let dir: string;
  let child: ChildIchidan | null = null;

  beforeAll(async () => {
    sink = await startSink({ host: '127.0.0.2' });
    dir = await mkdtemp(join(tmpdir(), 'ichidan-test-'));
  });
  afterAll(async () => {
    if (child) {
      child.proc.kill('SIGTERM');
      await child.exited;
    }
    await sink?.close();
    await rm(dir, { recursive: true, force: true });
  });

  const cli = (...args: string[]) => exec(process.execPath, [CLI, ...args, '-c', join(dir, 'ichidan.yaml')]);

  it('disables and enables an engine for the next transaction; a restart keeps it disabled', async () => {
    await writeFile(join(dir, 'ichidan.yaml'), stringify(baseConfig(join(dir, 'data'), {
      listeners: [{ name: 'mx', role: 'mx', port: 0 }],
      tenants: { demo: { domains: ['example.test'] } },
      routes: { 'example.test': { host: '127.0.0.2', port: sink.port } },
      engines: [
        { name: 'clamav', type: 'clamd', servers: [{ host: clamd!.host, port: clamd!.port }] },
        { name: 'rspamd', type: 'rspamd', url: `http://${rspamd!.host}:${rspamd!.port}` },
      ],
    })));
    child = await startChild(join(dir, 'ichidan.yaml'));
    let load = startLoad(child.ports.mx, { senders: 2 });
    await sleep(800);
    const disabled = await cli('engines', 'disable', 'rspamd', '--reason', 'vendor outage ticket 42');
    expect(disabled.stdout).toBe('rspamd: disabled\n');
    const disabledAt = Date.now();
    await sleep(800);
    const listed = (await cli('engines', 'list')).stdout;
    expect(listed.split('\n')[0]).toBe('generation 1');
    expect(listed).toMatch(/^rspamd\trspamd\tspam\tdisabled\tclosed\t.*disabled: vendor outage ticket 42$/m);
    expect(listed).toMatch(/^clamav\tclamd\tav\tenabled\tclosed\t/m);
    let sent = await load.stop();

    // Restart: the switch was persisted.
    child.proc.kill('SIGTERM');
    await child.exited;
    child = await startChild(join(dir, 'ichidan.yaml'));
    expect((await cli('engines', 'list')).stdout).toMatch(/^rspamd\t.*\tdisabled\t/m);
    load = startLoad(child.ports.mx, { senders: 2 });
    await sleep(800);
    expect((await cli('engines', 'enable', 'rspamd')).stdout).toBe('rspamd: enabled\n');
    const enabledAt = Date.now();
    await sleep(800);
    sent = [...sent, ...(await load.stop())];
    summary('CLI switches', sent);
    expect(sent.filter((s) => s.code !== 250)).toEqual([]);
    await waitDelivered(sent, sink);

    const rows = scans(join(dir, 'data'));
    const rspamdRun = (r: (typeof rows)[number]) => r.parsed.find((p) => p.engine === 'rspamd')!;
    // Scans that started well after the switch skipped rspamd as disabled; well after enabling, it ran again.
    const whileDisabled = rows.filter((r) => r.at > disabledAt + 200 && r.at < enabledAt - 200);
    expect(whileDisabled.length).toBeGreaterThan(0);
    for (const r of whileDisabled) expect(rspamdRun(r)).toMatchObject({ status: 'skipped', skipped: 'disabled' });
    const afterEnable = rows.filter((r) => r.at > enabledAt + 200);
    expect(afterEnable.length).toBeGreaterThan(0);
    for (const r of afterEnable) expect(rspamdRun(r).status).toBe('clean');
    const evs = (await cli('engines', 'events')).stdout;
    expect(evs).toMatch(/\trspamd\tdisabled\tvendor outage ticket 42\n/);
    expect(evs).toMatch(/\trspamd\tenabled\toperator\n/);
  });

  it('reloads through the CLI and refuses a bad file naming the key, keeping the running config', async () => {
    const file = join(dir, 'ichidan.yaml');
    const good = (await import('node:fs/promises')).readFile(file, 'utf8');
    const text = await good;
    await writeFile(file, text.replace('engines:', 'scanning:\n  virus: quarantine\nlimits:\n  maxMessageSize: 1MB\nengines:'));
    expect((await cli('reload')).stdout).toBe('reloaded: generation 2\n');
    // Live settings reach the listener: a new session is offered the new SIZE.
    const smtp = await RawSmtp.open(child!.ports.mx);
    await smtp.reply();
    expect(await smtp.command('EHLO client.test')).toMatch(/^250[- ]SIZE 1048576$/m);
    smtp.socket.destroy();
    await writeFile(file, text.replace('engines:', 'scanning:\n  virus: shred\nengines:'));
    const bad = await cli('reload').then(() => null, (e: { code: number; stderr: string }) => e);
    expect(bad?.code).toBe(1);
    expect(bad?.stderr).toMatch(/scanning\.virus: must be one of "reject", "quarantine"/);
    // A file the schema accepts but whose CA file is missing: refused, naming the key, and nothing changes.
    await writeFile(file, text.replace('engines:', 'delivery:\n  tls:\n    caFile: /nonexistent/ca.pem\nengines:'));
    const missingCa = await cli('reload').then(() => null, (e: { code: number; stderr: string }) => e);
    expect(missingCa?.stderr).toMatch(/delivery\.tls\.caFile: cannot read \/nonexistent\/ca\.pem/);
    expect(child!.proc.exitCode).toBeNull();
    await writeFile(file, text.replace('port: 0', 'port: 0\n    greetingDelay: 1s'));
    expect((await cli('reload')).stdout).toBe('reloaded: generation 3; needs a restart to apply: listeners\n');
    // SIGHUP reloads too.
    await writeFile(file, text);
    child!.proc.kill('SIGHUP');
    await waitUntil(async () => (await cli('engines', 'list')).stdout.startsWith('generation 4\n'), 5_000, 'the reload by SIGHUP');
  });
});

describe('admin.watchConfig', () => {
  let dir: string;
  let child: ChildIchidan | null = null;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'ichidan-test-'));
  });
  afterAll(async () => {
    if (child) {
      child.proc.kill('SIGTERM');
      await child.exited;
    }
    await rm(dir, { recursive: true, force: true });
  });

  it('reloads when the file changes, and ignores a bad version of it', async () => {
    const file = join(dir, 'ichidan.yaml');
    const config = (virus: string) => stringify(baseConfig(join(dir, 'data'), {
      listeners: [{ name: 'mx', role: 'mx', port: 0 }], admin: { watchConfig: true }, scanning: { virus } as never,
    }));
    await writeFile(file, config('reject'));
    // The CLI reads a config of its own (to find the admin socket): the watched one will be broken on purpose.
    const cliFile = join(dir, 'cli.yaml');
    await writeFile(cliFile, config('reject'));
    child = await startChild(file);
    const generation = async () => Number(/^generation (\d+)/.exec((await exec(process.execPath, [CLI, 'engines', 'list', '-c', cliFile])).stdout)?.[1]);
    expect(await generation()).toBe(1);
    await writeFile(file, config('quarantine'));
    await waitUntil(async () => (await generation()) === 2, 10_000, 'the reload after the change');
    await writeFile(file, config('shred'));
    await sleep(1_000);
    expect(await generation()).toBe(2);
    expect(child.proc.exitCode).toBeNull();
    await writeFile(file, config('reject'));
    await waitUntil(async () => (await generation()) === 3, 10_000, 'the reload after the fix');
  });
});
