/*
 * Debian's HAProxy as the TCP load balancer in front of a listener: one frontend per entry, on a
 * free 127.0.0.1 port, each passing its connections to `to` with a PROXY header (`send-proxy` for
 * v1, `send-proxy-v2`). HAProxy runs in the foreground (-db) as a child of the test, with the
 * config file the test wrote, and is stopped by its PID.
 * In CI (env CI set) a missing haproxy is a failure, never a skip (.ci/run installs it).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { connect, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export const HAPROXY = '/usr/sbin/haproxy';
export const HAPROXY_SKIP = `${HAPROXY} is missing (apt-get install haproxy)`;

export function haproxyAvailable(): boolean {
  if (existsSync(HAPROXY)) return true;
  if (process.env.CI) throw new Error(`${HAPROXY} is missing: CI must install haproxy (.ci/run)`);
  return false;
}

export interface Frontend {
  name: string;
  send: 'send-proxy' | 'send-proxy-v2';
  /** The listener's port on 127.0.0.1. */
  to: number;
}

export interface Haproxy {
  /** The port of each frontend, by name. */
  port(name: string): number;
  output(): string;
  stop(): Promise<void>;
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address() as { port: number };
      s.close(() => resolve(port));
    });
  });
}

function accepts(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect(port, '127.0.0.1', () => { s.destroy(); resolve(true); });
    s.once('error', () => resolve(false));
  });
}

export async function startHaproxy(frontends: Frontend[]): Promise<Haproxy> {
  const dir = await mkdtemp(join(tmpdir(), 'ichidan-haproxy-'));
  const ports = new Map<string, number>();
  for (const f of frontends) ports.set(f.name, await freePort());
  const lines = [
    'global', '  maxconn 200',
    'defaults', '  mode tcp', '  timeout connect 5s', '  timeout client 60s', '  timeout server 60s',
    ...frontends.flatMap((f) => [
      `frontend ${f.name}`, `  bind 127.0.0.1:${ports.get(f.name)}`, `  default_backend ${f.name}_ichidan`,
      `backend ${f.name}_ichidan`, `  server ichidan 127.0.0.1:${f.to} ${f.send}`,
    ]),
  ];
  const file = join(dir, 'haproxy.cfg');
  await writeFile(file, lines.join('\n') + '\n');
  let out = '';
  const child: ChildProcess = spawn(HAPROXY, ['-db', '-f', file], { stdio: ['ignore', 'pipe', 'pipe'] });
  child.stdout!.on('data', (d) => { out += d; });
  child.stderr!.on('data', (d) => { out += d; });
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null && child.pid) process.kill(child.pid, 'SIGTERM');
    await exited;
    await rm(dir, { recursive: true, force: true });
  };
  const until = Date.now() + 10_000;
  for (const port of ports.values()) {
    while (!(await accepts(port))) {
      if (child.exitCode !== null || Date.now() > until) {
        await stop();
        throw new Error(`haproxy did not start: ${out}`);
      }
      await new Promise((r) => setTimeout(r, 50));
    }
  }
  return {
    port: (name) => {
      const p = ports.get(name);
      if (p === undefined) throw new Error(`no haproxy frontend ${name}`);
      return p;
    },
    output: () => out,
    stop,
  };
}
