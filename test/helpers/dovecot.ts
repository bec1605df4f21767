/*
 * A real Dovecot (Debian's dovecot-core and dovecot-lmtpd) of a test's own: its config folder,
 * base_dir and log in a temporary folder, LMTP on 127.0.0.9 at a free port, the auth service's
 * client socket (the one Postfix's SASL uses) in the folder, users from a passwd-file with plain
 * passwords. Started as a child (`dovecot -F -c <conf>`) in a process group of its own, stopped by
 * that group's id.
 *
 * Gives: `startDovecot(users)` (the LMTP address, the auth socket, `lmtpConnections()` counted from
 * Dovecot's own log, `stop()`), and `dovecotSupport()` — with CI set, a missing Dovecot is an error
 * instead of a skip.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync, chmodSync, mkdirSync } from 'node:fs';
import { createConnection, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

export const DOVECOT = '/usr/sbin/dovecot';
const LMTP = '/usr/lib/dovecot/lmtp';
export const LMTP_HOST = '127.0.0.9';

export function dovecotSupport(): { ok: true } | { ok: false; reason: string } {
  if (existsSync(DOVECOT) && existsSync(LMTP)) return { ok: true };
  if (process.env.CI) throw new Error('dovecot-core and dovecot-lmtpd are missing: CI must install them (.ci/run)');
  return { ok: false, reason: 'Dovecot is not installed (apt install dovecot-core dovecot-lmtpd)' };
}

export interface TestDovecot {
  lmtp: { host: string; port: number };
  authSocket: string;
  dir: string;
  /** LMTP connections Dovecot logged so far (each recipient probe is one). */
  lmtpConnections(): number;
  log(): string;
  stop(): Promise<void>;
}

function freePort(host: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.listen(0, host, () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
    s.on('error', reject);
  });
}

function reachable(port: number, host: string): Promise<boolean> {
  return new Promise((resolve) => {
    const c = createConnection({ port, host }, () => { c.destroy(); resolve(true); });
    c.on('error', () => resolve(false));
  });
}

/** `users`: login → plain password. */
export async function startDovecot(users: Record<string, string>): Promise<TestDovecot> {
  const dir = mkdtempSync(join(tmpdir(), 'ichidan-dovecot-'));
  chmodSync(dir, 0o755);
  for (const d of ['run', 'state', 'mail']) mkdirSync(join(dir, d));
  const port = await freePort(LMTP_HOST);
  const passwd = join(dir, 'passwd');
  writeFileSync(passwd, Object.entries(users).map(([u, p]) => `${u}:{PLAIN}${p}::::::\n`).join(''));
  chmodSync(passwd, 0o644);
  const conf = join(dir, 'dovecot.conf');
  const authSocket = join(dir, 'auth-client');
  writeFileSync(conf, `
base_dir = ${dir}/run
state_dir = ${dir}/state
log_path = ${dir}/dovecot.log
protocols = lmtp
listen = ${LMTP_HOST}
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
default_internal_user = dovecot
default_login_user = dovenull
mail_location = maildir:${dir}/mail/%u
passdb {
  driver = passwd-file
  args = scheme=PLAIN username_format=%u ${passwd}
}
userdb {
  driver = passwd-file
  args = username_format=%u ${passwd}
  default_fields = uid=65534 gid=65534 home=${dir}/mail/%u
}
service lmtp {
  inet_listener lmtp {
    address = ${LMTP_HOST}
    port = ${port}
  }
}
service auth {
  unix_listener auth-client {
    path = ${authSocket}
    mode = 0666
  }
}
`);
  // Its own process group: Dovecot's master leaves a child serving an open client (auth) when it
  // exits, so stop() ends the whole group, which holds only this instance.
  const proc: ChildProcess = spawn(DOVECOT, ['-F', '-c', conf], { stdio: ['ignore', 'ignore', 'pipe'], detached: true });
  const group = (signal: NodeJS.Signals) => {
    try {
      process.kill(-proc.pid!, signal);
    } catch {
      // the group is already gone
    }
  };
  let stderr = '';
  proc.stderr!.on('data', (d) => { stderr += String(d); });
  const exited = new Promise<void>((r) => proc.on('exit', () => r()));
  // A test process that ends without stop() takes its Dovecot with it.
  const orphan = () => group('SIGKILL');
  process.once('exit', orphan);
  let stopped = false;
  const logFile = join(dir, 'dovecot.log');
  const log = () => (existsSync(logFile) ? readFileSync(logFile, 'utf8') : '');
  for (let i = 0; ; i++) {
    if (existsSync(authSocket) && await reachable(port, LMTP_HOST)) break;
    if (i > 100 || proc.exitCode !== null) {
      group('SIGKILL');
      throw new Error(`dovecot did not start: ${stderr}${log()}`);
    }
    await sleep(50);
  }
  return {
    lmtp: { host: LMTP_HOST, port },
    authSocket,
    dir,
    lmtpConnections: () => log().split('\n').filter((l) => /lmtp\(\d+\): Info: Connect from/.test(l)).length,
    log,
    stop: async () => {
      if (stopped) return;
      stopped = true;
      group('SIGTERM');
      await exited;
      group('SIGKILL');
      process.off('exit', orphan);
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
