// Operator switches from the CLI while traffic flows, against a child process: engines disabled and
// enabled for the next transaction (kept across a restart), and reloads through the CLI and SIGHUP.
import { execFile } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { stringify } from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { baseConfig, waitUntil } from './helpers/app.js';
import { CLI, startChild, type ChildIchidan } from './helpers/child.js';
import { realDaemon } from './helpers/daemons.js';
import { scans, sleep, summary, waitDelivered } from './helpers/engine-traffic.js';
import { startLoad } from './helpers/load.js';
import { RawSmtp } from './helpers/raw-smtp.js';
import { startSink, type Sink } from './helpers/sink.js';

const exec = promisify(execFile);
const clamd = realDaemon('clamd');
const rspamd = realDaemon('rspamd');

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
