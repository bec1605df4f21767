/*
 * A cluster on one machine for the scenario tests and the cluster benchmark: a real redis-server,
 * a real Postfix MX that takes at most CAP connections per client address (capped-mx.ts), and
 * Ichidan nodes as real processes (child.ts), each with its own data folder and config file, all
 * naming the same Redis and delivering to the MX from the same address.
 *
 * Gives: `startClusterWorld()` → the Redis, the MX, `node(i)` to start (or restart) node i,
 * `kill(i)`, and `tally()`: what the MX's log says arrived (per tenant, in order), how many
 * connections it refused for the cap and how many it accepted. Network: loopback only.
 */
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { stringify } from 'yaml';
import type { PostfixInstance } from '../../bench/bench-postfix.js';
import { cappedMx, CAP, MX, TENANTS } from './capped-mx.js';
import { startChild, type ChildIchidan } from './child.js';
import { startRedis, type TestRedis } from './redis.js';

export { CAP, MX, TENANTS };

export interface ClusterWorld {
  redis: TestRedis;
  mx: PostfixInstance;
  dir: string;
  nodes: Array<ChildIchidan | null>;
  /** Starts node i (0-based) on its data folder, again after a kill. */
  node(i: number): Promise<ChildIchidan>;
  kill(i: number, signal?: NodeJS.Signals): Promise<void>;
  tally(): Promise<MxTally>;
  stop(): Promise<void>;
}

export interface MxTally {
  /** Recipients that arrived, in the MX's order (e.g. "a17"). */
  arrivals: string[];
  refused: number;
  connections: number;
}

export interface WorldOptions {
  nodes: number;
  leaseTtl?: string;
  /** Extra config for every node. */
  extra?: Record<string, unknown>;
}

export async function startClusterWorld(opts: WorldOptions): Promise<ClusterWorld> {
  const dir = await mkdtemp(join(tmpdir(), 'ichidan-cluster-'));
  const redis = await startRedis();
  const mx = await cappedMx();
  const nodes: Array<ChildIchidan | null> = Array.from({ length: opts.nodes }, () => null);
  const configFile = async (i: number) => {
    const file = join(dir, `node${i + 1}.yaml`);
    await writeFile(file, stringify({
      hostname: `node${i + 1}.ichidan.test`,
      dataDir: join(dir, `node${i + 1}`),
      log: { level: 'info' },
      listeners: [{ name: 'mx', role: 'mx', address: '127.0.0.1', port: 0, tls: 'none' }],
      admin: { socket: join(dir, `node${i + 1}.sock`) },
      tenants: Object.fromEntries(Object.entries(TENANTS).map(([name, address]) => [name, { networks: [`${address}/32`] }])),
      routes: { 'capped.example': { host: MX, port: mx.port } },
      queue: { fsync: false, retryInitial: '500ms', retryMax: '2s', retryJitter: 0 },
      // The operator knows the destination's cap: it is the site's, for the whole cluster.
      delivery: { site: { maxConnections: CAP, initialConnections: CAP } },
      cluster: { redis: redis.url, node: `node${i + 1}`, leaseTtl: opts.leaseTtl ?? '2s', heartbeat: '250ms' },
      ...opts.extra,
    }));
    return file;
  };
  const world: ClusterWorld = {
    redis, mx, dir, nodes,
    async node(i) {
      const child = await startChild(await configFile(i));
      nodes[i] = child;
      return child;
    },
    async kill(i, signal = 'SIGKILL') {
      const child = nodes[i];
      if (!child) return;
      child.proc.kill(signal);
      await child.exited;
      nodes[i] = null;
    },
    async tally() {
      const text = existsSync(mx.maillog) ? await readFile(mx.maillog, 'utf8') : '';
      return {
        arrivals: [...text.matchAll(/postfix\/discard\[\d+\]: \w+: to=<([abc]\d+)@capped\.example>/g)].map((m) => m[1]),
        refused: (text.match(/Connection concurrency limit exceeded/g) ?? []).length,
        connections: (text.match(/postfix\/smtpd\[\d+\]: connect from/g) ?? []).length,
      };
    },
    async stop() {
      for (let i = 0; i < nodes.length; i++) await world.kill(i, 'SIGTERM').catch(() => undefined);
      await mx.stop();
      await redis.stop();
      await rm(dir, { recursive: true, force: true });
    },
  };
  return world;
}

/** Jain's fairness index of some shares: 1 when all are equal, 1/n when one has everything. */
export function jain(xs: number[]): number {
  const sum = xs.reduce((a, b) => a + b, 0);
  const squares = xs.reduce((a, b) => a + b * b, 0);
  return squares === 0 ? 1 : (sum * sum) / (xs.length * squares);
}
