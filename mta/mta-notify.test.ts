// systemd's notifications reach $NOTIFY_SOCKET (a unix datagram socket a python3 listener reads,
// as systemd would): through the sd_notify addon, through systemd-notify when the addon is
// missing, not at all without NOTIFY_SOCKET; a socket nobody listens on is logged, never thrown.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { Writable } from 'node:stream';
import { afterAll, describe, expect, it } from 'vitest';
import { createLogger } from './mta-log.js';
import { addonSender, createNotifier } from './mta-notify.js';

const LISTENER = `
import json, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
print(json.dumps(["LISTENING"]), flush=True)
while True:
    print(json.dumps(s.recv(4096).decode().split("\\n")), flush=True)
`;

const python = spawnSync('python3', ['--version']).status === 0;
const notifyProgram = spawnSync('systemd-notify', ['--help'], { stdio: 'ignore' }).status === 0;
if (process.env.CI && !(python && notifyProgram)) throw new Error('python3 and systemd-notify (Debian: systemd) must be installed in CI (.ci/run)');

function listen(): { socket: string; received: string[][]; next: (n: number) => Promise<string[][]>; proc: ChildProcess } {
  const socket = join(mkdtempSync(join(tmpdir(), 'ichidan-notify-')), 'notify.sock');
  const proc = spawn('python3', ['-c', LISTENER, socket], { stdio: ['ignore', 'pipe', 'inherit'] });
  const received: string[][] = [];
  const waiters: Array<() => void> = [];
  createInterface({ input: proc.stdout! }).on('line', (line) => { received.push(JSON.parse(line)); for (const w of waiters.splice(0)) w(); });
  const next = (n: number) => new Promise<string[][]>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`fewer than ${n} datagrams within 10 s: ${JSON.stringify(received)}`)), 10_000);
    const check = () => { if (received.length >= n) { clearTimeout(timer); resolve(received); } else waiters.push(check); };
    check();
  });
  return { socket, received, next, proc };
}

function capture(): { log: ReturnType<typeof createLogger>; lines: string[] } {
  const lines: string[] = [];
  return { log: createLogger('info', new Writable({ write(chunk, _e, done) { lines.push(String(chunk)); done(); } })), lines };
}

describe.skipIf(!python || !notifyProgram)(`systemd notifications${python && notifyProgram ? '' : ' (skipped: python3 or systemd-notify missing)'}`, () => {
  const procs: ChildProcess[] = [];
  afterAll(() => { for (const p of procs) p.kill(); });

  it('sends READY=1 with MAINPID, RELOADING=1 with the monotonic clock, STOPPING=1 through the addon', async () => {
    expect(addonSender()).not.toBeNull();
    const l = listen();
    procs.push(l.proc);
    await l.next(1);
    const { log, lines } = capture();
    const notifier = createNotifier(log, { NOTIFY_SOCKET: l.socket });
    notifier.ready();
    notifier.reloading();
    notifier.stopping();
    const got = await l.next(4);
    expect(got.slice(1)).toEqual([['READY=1', `MAINPID=${process.pid}`], ['RELOADING=1', expect.stringMatching(/^MONOTONIC_USEC=\d+$/)], ['STOPPING=1']]);
    expect(lines).toEqual([]);
  });

  it('goes through systemd-notify when the addon is missing, saying so once', async () => {
    const l = listen();
    procs.push(l.proc);
    await l.next(1);
    const { log, lines } = capture();
    createNotifier(log, { NOTIFY_SOCKET: l.socket }, null).ready();
    const got = await l.next(2);
    expect(got[1]).toContain('READY=1');
    expect(got[1]).toContain(`MAINPID=${process.pid}`);
    expect(lines.join('')).toContain('the sd_notify addon is not built');
  });

  it('sends nothing without NOTIFY_SOCKET, and logs (never throws) when nobody listens', async () => {
    const { log, lines } = capture();
    let calls = 0;
    createNotifier(log, {}, () => { calls++; }).ready();
    expect(calls).toBe(0);
    const gone = join(mkdtempSync(join(tmpdir(), 'ichidan-notify-')), 'nobody.sock');
    expect(() => createNotifier(log, { NOTIFY_SOCKET: gone }).ready()).not.toThrow();
    expect(lines.join('')).toContain('cannot notify systemd');
    expect(lines.join('')).toContain('ENOENT');
  });
});
