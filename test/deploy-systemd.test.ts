// deploy/: the systemd unit and the production example config, tested as far as a machine without
// systemd as PID 1 allows: `systemd-analyze verify` reads the unit (no warning allowed), the
// example config passes check-config with test certificates in place of Let's Encrypt's, and
// the unit's steps are run by hand: the built ichidan as the unprivileged system user "ichidan"
// with CAP_NET_BIND_SERVICE as its only (ambient) capability, bounding set and no_new_privs as the
// unit sets them, on port 25 of a loopback address, with NOTIFY_SOCKET pointing at a datagram
// socket a python3 listener reads (Node cannot receive unix datagrams). READY=1 must come once
// port 25 answers 220, SIGHUP must reload (RELOADING=1, READY=1, the reload logged), SIGUSR2 must
// reopen log.file after a rename (logrotate's way), SIGTERM must send STOPPING=1 and exit 0.
// Needs root (to change user and bind port 25) and python3, setpriv, useradd: with CI set a
// missing one is a failure, else the suite is skipped saying why.
import { execFile, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { chmodSync, chownSync, existsSync, mkdirSync, mkdtempSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { createInterface } from 'node:readline';
import { promisify } from 'node:util';
import { afterAll, describe, expect, it } from 'vitest';
import { makeTestCa } from './helpers/test-ca.js';
import { CLI } from './helpers/child.js';

const run = promisify(execFile);
const ROOT = join(import.meta.dirname, '..');
const USER = 'ichidan';

function has(command: string, args: string[]): boolean {
  return spawnSync(command, args, { stdio: 'ignore' }).status === 0;
}

function byHandSupport(): { ok: true } | { ok: false; reason: string } {
  const missing = [['python3', '--version'], ['setpriv', '--version'], ['unshare', '--version'], ['useradd', '--help']].filter(([c, a]) => !has(c, [a])).map(([c]) => c);
  const reason = process.getuid?.() !== 0 ? 'needs root (to run as another user and bind port 25)' : missing.length > 0 ? `${missing.join(', ')} missing` : null;
  if (reason === null) return { ok: true };
  if (process.env.CI) throw new Error(`the systemd unit's steps by hand: ${reason}: CI runs as root and installs python3 (.ci/run)`);
  return { ok: false, reason };
}

function analyzeSupport(): { ok: true } | { ok: false; reason: string } {
  if (has('systemd-analyze', ['--version'])) return { ok: true };
  if (process.env.CI) throw new Error('systemd-analyze is missing: CI must install systemd (.ci/run)');
  return { ok: false, reason: 'systemd-analyze missing' };
}

const analyze = analyzeSupport();
const byHand = byHandSupport();

describe.skipIf(!analyze.ok)(`deploy/ichidan.service read by systemd-analyze verify${analyze.ok ? '' : ` (skipped: ${analyze.reason})`}`, () => {
  it('verifies with no warning (the executable pointed at the built CLI)', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'ichidan-unit-'));
    const unit = readFileSync(join(ROOT, 'deploy', 'ichidan.service'), 'utf8');
    expect(unit).toMatch(/^ExecStart=\/usr\/local\/bin\/ichidan start$/m);
    // verify wants the executable to exist: the built CLI stands in for the installed one.
    writeFileSync(join(dir, 'ichidan.service'), unit.replaceAll('/usr/local/bin/ichidan', `${process.execPath} ${CLI}`));
    const out = await run('systemd-analyze', ['verify', join(dir, 'ichidan.service')]);
    expect(out.stderr).toBe('');
    for (const line of ['Type=notify', 'User=ichidan', 'AmbientCapabilities=CAP_NET_BIND_SERVICE', 'CapabilityBoundingSet=CAP_NET_BIND_SERVICE',
      'NoNewPrivileges=yes', 'ProtectSystem=strict', 'StateDirectory=ichidan', 'Restart=on-failure', 'ExecReload=/bin/kill -HUP $MAINPID']) {
      expect(unit.split('\n')).toContain(line);
    }
    // The test can fail: a misspelt key is reported.
    writeFileSync(join(dir, 'bad.service'), unit.replace('ProtectHome=yes', 'ProtectHomes=yes').replaceAll('/usr/local/bin/ichidan', `${process.execPath} ${CLI}`));
    expect((await run('systemd-analyze', ['verify', join(dir, 'bad.service')])).stderr).toContain("Unknown key 'ProtectHomes'");
  });
});

describe('deploy/ichidan.production.yaml', () => {
  it('passes check-config with test certificates where Let\'s Encrypt\'s would be', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'ichidan-prod-'));
    const ca = await makeTestCa();
    const leaf = await ca.issue(['mx.example.com']);
    writeFileSync(join(dir, 'fullchain.pem'), leaf.cert);
    writeFileSync(join(dir, 'privkey.pem'), leaf.key);
    const text = readFileSync(join(ROOT, 'deploy', 'ichidan.production.yaml'), 'utf8');
    expect(text).toContain('/etc/letsencrypt/live/mx.example.com/fullchain.pem');
    writeFileSync(join(dir, 'ichidan.yaml'), text.replaceAll('/etc/letsencrypt/live/mx.example.com', dir));
    const out = await run(process.execPath, [CLI, 'check-config', join(dir, 'ichidan.yaml')]);
    expect(out.stdout).toContain('ok (2 listeners, 1 tenants, 1 routes)');
    // As it is, the certificate files are missing here, and check-config says so.
    const err = await run(process.execPath, [CLI, 'check-config', join(ROOT, 'deploy', 'ichidan.production.yaml')]).catch((e) => e);
    expect(err.code).toBe(1);
    expect(err.stderr).toContain('/etc/letsencrypt/live/mx.example.com');
  });
});

describe('log.file', () => {
  it('a file that cannot be opened stops the start with exit 1, naming the key', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'ichidan-logfile-'));
    writeFileSync(join(dir, 'not-a-folder'), '');
    writeFileSync(join(dir, 'ichidan.yaml'), 'dataDir: data\nlog: { file: not-a-folder/ichidan.log }\nlisteners:\n  - { name: mx, role: mx, address: 127.0.0.1, port: 0 }\n');
    const err = await run(process.execPath, [CLI, 'start', '-c', join(dir, 'ichidan.yaml')]).catch((e) => e);
    expect(err.code).toBe(1);
    expect(err.stderr).toContain(`log.file: cannot open ${join(dir, 'not-a-folder', 'ichidan.log')}`);
    expect(existsSync(join(dir, 'data'))).toBe(false);
  });
});

/** Prints each datagram received on `socket` as one JSON line (a list of its lines). */
const LISTENER = `
import json, os, socket, sys
path = sys.argv[1]
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(path)
os.chmod(path, 0o666)
print(json.dumps(["LISTENING"]), flush=True)
while True:
    data = s.recv(4096)
    print(json.dumps(data.decode().split("\\n")), flush=True)
`;

function greeting(address: string, port: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = connect({ host: address, port });
    socket.setEncoding('utf8');
    socket.once('data', (line: string) => { socket.end('QUIT\r\n'); resolve(line); });
    socket.once('error', reject);
  });
}

describe.skipIf(!byHand.ok)(`the unit's steps by hand: user ichidan, CAP_NET_BIND_SERVICE only, port 25, Type=notify${byHand.ok ? '' : ` (skipped: ${byHand.reason})`}`, () => {
  const started: ChildProcess[] = [];
  afterAll(() => { for (const p of started) if (p.exitCode === null) p.kill('SIGKILL'); });

  it('sends READY=1 once port 25 answers 220, reloads on SIGHUP, reopens log.file on SIGUSR2, STOPPING=1 on SIGTERM', async () => {
    if (!has('getent', ['passwd', USER])) {
      await run('useradd', ['--system', '--no-create-home', '--home-dir', '/nonexistent', '--shell', '/usr/sbin/nologin', USER]);
    }
    // The unit's user runs the checkout's build, which may sit where that user cannot reach it (a
    // checkout under /root): in a mount namespace of its own, the checkout is bound onto a folder
    // anyone may enter, and the process runs it from there (the binding ends with the process).
    const seat = mkdtempSync(join(tmpdir(), 'ichidan-unit-pkg-'));
    chmodSync(seat, 0o755);
    const cli = join(seat, relative(ROOT, CLI));
    const asUnitUser = (setpriv: string[], command: string[]): [string, string[]] => ['unshare', [
      '--mount', '--propagation', 'private', '--', 'sh', '-c', 'mount --bind "$1" "$2" && shift 2 && exec "$@"', 'sh', ROOT, seat,
      'setpriv', '--reuid', USER, '--regid', USER, '--init-groups', ...setpriv, '--', ...command,
    ]];
    const readable = spawnSync(...asUnitUser([], [process.execPath, '-e', `require('fs').accessSync(${JSON.stringify(cli)})`]));
    expect(readable.status, `user ${USER} cannot read ${cli}: ${String(readable.stderr)}`).toBe(0);
    const uid = Number((await run('id', ['-u', USER])).stdout);
    const gid = Number((await run('id', ['-g', USER])).stdout);
    const dir = mkdtempSync(join(tmpdir(), 'ichidan-unit-run-'));
    chmodSync(dir, 0o755);
    const data = join(dir, 'data');
    const logs = join(dir, 'log');
    for (const d of [data, logs]) { mkdirSync(d, { mode: 0o700 }); chownSync(d, uid, gid); }
    const address = `127.0.${1 + Math.floor(Math.random() * 250)}.${2 + Math.floor(Math.random() * 250)}`;
    const config = join(dir, 'ichidan.yaml');
    writeFileSync(config, `hostname: mx.example.test\ndataDir: data\nlog: { file: log/ichidan.log }\nlisteners:\n  - { name: mx, role: mx, address: ${address}, port: 25 }\n`);
    chmodSync(config, 0o644);

    const notifySocket = join(dir, 'notify.sock');
    const listener = spawn('python3', ['-c', LISTENER, notifySocket], { stdio: ['ignore', 'pipe', 'inherit'] });
    started.push(listener);
    const datagrams: string[][] = [];
    const waiters: Array<() => void> = [];
    createInterface({ input: listener.stdout! }).on('line', (line) => {
      datagrams.push(JSON.parse(line) as string[]);
      for (const w of waiters.splice(0)) w();
    });
    const next = (want: string, from: number) => new Promise<number>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no ${want} within 30 s (received: ${JSON.stringify(datagrams)})`)), 30_000);
      const check = () => {
        const i = datagrams.findIndex((d, j) => j >= from && d.includes(want));
        if (i >= 0) { clearTimeout(timer); resolve(i); } else waiters.push(check);
      };
      check();
    });
    await next('LISTENING', 0);

    const ichidan = spawn(...asUnitUser(
      ['--inh-caps', '-all,+net_bind_service', '--ambient-caps', '+net_bind_service', '--bounding-set', '-all,+net_bind_service', '--no-new-privs'],
      [process.execPath, cli, 'start', '-c', config],
    ), { cwd: '/', env: { PATH: process.env.PATH, NOTIFY_SOCKET: notifySocket }, stdio: ['ignore', 'ignore', 'pipe'] });
    started.push(ichidan);
    let stderr = '';
    ichidan.stderr!.on('data', (d) => { stderr += d; });
    const exited = new Promise<number | null>((r) => ichidan.on('exit', r));

    const ready = await Promise.race([next('READY=1', 0), exited.then((code) => { throw new Error(`ichidan exited (${code}): ${stderr}`); })]);
    // Ready means listening: port 25 answers at once, and nothing came before READY=1.
    expect((await greeting(address, 25)).startsWith('220 ')).toBe(true);
    expect(ready).toBe(1);
    expect(datagrams[ready]).toContain(`MAINPID=${ichidan.pid}`);
    // Not root, and holding CAP_NET_BIND_SERVICE (bit 10) alone.
    const status = readFileSync(`/proc/${ichidan.pid}/status`, 'utf8');
    expect(status).toMatch(new RegExp(`^Uid:\\s+${uid}\\s+${uid}\\s+${uid}\\s+${uid}$`, 'm'));
    for (const set of ['CapEff', 'CapPrm', 'CapAmb', 'CapBnd']) expect(status).toMatch(new RegExp(`^${set}:\\s+0000000000000400$`, 'm'));
    expect(status).toMatch(/^NoNewPrivs:\s+1$/m);

    // logrotate: the file is renamed, SIGUSR2 opens a new one; then SIGHUP reloads, logged in the new file.
    const log = join(logs, 'ichidan.log');
    renameSync(log, `${log}.1`);
    ichidan.kill('SIGUSR2');
    await new Promise((r) => setTimeout(r, 500));
    expect(existsSync(log)).toBe(true);
    ichidan.kill('SIGHUP');
    const reloading = await next('RELOADING=1', ready + 1);
    expect(datagrams[reloading].some((l) => /^MONOTONIC_USEC=\d+$/.test(l))).toBe(true);
    await next('READY=1', reloading + 1);
    await expect.poll(() => readFileSync(log, 'utf8'), { timeout: 10_000 }).toContain('"msg":"configuration reloaded"');
    expect(readFileSync(log, 'utf8')).toContain('"generation":2');
    expect(readFileSync(`${log}.1`, 'utf8')).toContain('"msg":"queue reconciled"');
    expect(readFileSync(`${log}.1`, 'utf8')).not.toContain('configuration reloaded');

    ichidan.kill('SIGTERM');
    await next('STOPPING=1', reloading + 1);
    expect(await exited).toBe(0);
    expect(readFileSync(log, 'utf8')).toContain('"msg":"stopped"');
    listener.kill('SIGTERM');
  });
});
