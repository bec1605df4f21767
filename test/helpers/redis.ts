/*
 * A real Redis for the cluster tests and benchmarks: Debian's redis-server on a free loopback
 * port, in a folder of its own, no persistence, stopped by its pid.
 *
 * Gives: `startRedis()` (its URL, pid, `kill(signal)`, `restart()` on the same port, `stop()`),
 * and `redisSupport()` — with CI set, a missing redis-server is an error instead of a skip.
 * Network: 127.0.0.1 only.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { Redis } from 'ioredis';

export const REDIS_SERVER = '/usr/bin/redis-server';

export function redisSupport(): { ok: true } | { ok: false; reason: string } {
  if (existsSync(REDIS_SERVER)) return { ok: true };
  if (process.env.CI) throw new Error(`${REDIS_SERVER} is missing: CI must install redis-server (.ci/run)`);
  return { ok: false, reason: 'redis-server is not installed (apt install redis-server)' };
}

export interface TestRedis {
  url: string;
  port: number;
  readonly pid: number;
  /** A client of its own (for assertions), closed by stop(). */
  client(): Redis;
  kill(signal?: NodeJS.Signals): Promise<void>;
  restart(): Promise<void>;
  stop(): Promise<void>;
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
    s.on('error', reject);
  });
}

export async function startRedis(): Promise<TestRedis> {
  const dir = mkdtempSync(join(tmpdir(), 'ichidan-redis-'));
  const port = await freePort();
  const clients: Redis[] = [];
  let proc: ChildProcess | null = null;
  let exited: Promise<void> = Promise.resolve();

  const launch = async () => {
    proc = spawn(REDIS_SERVER, ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', dir,
      '--pidfile', join(dir, 'redis.pid'), '--daemonize', 'no', '--protected-mode', 'yes', '--loglevel', 'warning'], { stdio: 'ignore' });
    const p = proc;
    exited = new Promise((r) => p.on('exit', () => r()));
    // A test process that ends without stop() (a failed or timed-out suite) takes its Redis with it.
    const orphan = () => { p.kill('SIGKILL'); };
    process.once('exit', orphan);
    p.on('exit', () => process.off('exit', orphan));
    const probe = new Redis({ port, host: '127.0.0.1', lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null });
    probe.on('error', () => undefined);
    for (let i = 0; i < 100; i++) {
      try {
        await probe.connect();
        await probe.ping();
        probe.disconnect();
        return;
      } catch {
        probe.disconnect();
        await sleep(50);
      }
    }
    throw new Error(`redis-server did not start on 127.0.0.1:${port}`);
  };
  await launch();

  const kill = async (signal: NodeJS.Signals = 'SIGKILL') => {
    if (proc && proc.exitCode === null && proc.signalCode === null) proc.kill(signal);
    await exited;
  };
  return {
    url: `redis://127.0.0.1:${port}/0`,
    port,
    get pid() { return proc?.pid ?? 0; },
    client() {
      const c = new Redis({ port, host: '127.0.0.1' });
      c.on('error', () => undefined);
      clients.push(c);
      return c;
    },
    kill,
    restart: async () => {
      await kill('SIGKILL');
      await launch();
    },
    stop: async () => {
      for (const c of clients) c.disconnect();
      await kill('SIGTERM');
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
