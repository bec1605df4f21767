/*
 * A cluster on one machine for the scenario tests and the cluster benchmark: a real redis-server,
 * a real Postfix MX that takes at most CAP connections per client address (capped-mx.ts), and
 * Ichidan nodes as real processes (child.ts), each with its own data folder and config file, all
 * naming the same Redis and delivering to the MX from the same address.
 *
 * Gives: `startClusterWorld()` → the Redis, the MX, `node(i)` to start (or restart) node i,
 * `kill(i)`, and `tally()`: what the MX's log says arrived (per tenant, in order), how many
 * connections it refused for the cap and how many it accepted; `runCappedCluster()`, the
 * fairness run of the scenario test and the benchmark. Network: loopback only.
 */
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { request } from 'node:http';
import { existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { stringify } from 'yaml';
import type { PostfixInstance } from '../../bench/bench-postfix.js';
import { sampleConnections } from '../../bench/bench-proc.js';
import { Submitter } from '../../bench/bench-submit.js';
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
  /** Lets every node deliver its tenants' mail (rewrites the configs without `suspended`, SIGHUP). */
  resume(): Promise<void>;
  tally(): Promise<MxTally>;
  /** A metric of node i (its admin socket's /metrics), summed over its labels; NaN when absent. */
  metric(i: number, name: string): Promise<number>;
  stop(): Promise<void>;
}

export interface MxTally {
  /** Recipients that arrived, in the MX's order (e.g. "a17"). */
  arrivals: string[];
  refused: number;
  connections: number;
  /** The most connections from one client address the MX itself counted at once (anvil's statistics). */
  mxPeak: number;
}

export interface WorldOptions {
  nodes: number;
  leaseTtl?: string;
  /** Extra config for every node. */
  extra?: Record<string, unknown>;
  /** Start with every tenant's delivery suspended (queued mail waits for `resume()`). */
  suspended?: boolean;
}

export async function startClusterWorld(opts: WorldOptions): Promise<ClusterWorld> {
  const dir = await mkdtemp(join(tmpdir(), 'ichidan-cluster-'));
  const redis = await startRedis();
  const mx = await cappedMx();
  const nodes: Array<ChildIchidan | null> = Array.from({ length: opts.nodes }, () => null);
  let suspended = opts.suspended ?? false;
  const configFile = async (i: number) => {
    const file = join(dir, `node${i + 1}.yaml`);
    await writeFile(file, stringify({
      hostname: `node${i + 1}.ichidan.test`,
      dataDir: join(dir, `node${i + 1}`),
      log: { level: 'info' },
      listeners: [{ name: 'mx', role: 'mx', address: '127.0.0.1', port: 0, tls: 'none' }],
      admin: { socket: join(dir, `node${i + 1}.sock`) },
      tenants: Object.fromEntries(Object.entries(TENANTS).map(([name, address]) => [name, { networks: [`${address}/32`], egress: { suspended } }])),
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
    async resume() {
      suspended = false;
      for (let i = 0; i < nodes.length; i++) {
        await configFile(i);
        nodes[i]?.proc.kill('SIGHUP');
      }
    },
    metric(i, name) {
      return new Promise((resolve, reject) => {
        const req = request({ socketPath: join(dir, `node${i + 1}.sock`), path: '/metrics' }, (res) => {
          let text = '';
          res.on('data', (d) => { text += d; });
          res.on('end', () => {
            const values = [...text.matchAll(new RegExp(`^${name}(?:\\{[^}]*\\})? (\\S+)$`, 'gm'))].map((m) => Number(m[1]));
            resolve(values.length === 0 ? NaN : values.reduce((a, b) => a + b, 0));
          });
        });
        req.on('error', reject);
        req.end();
      });
    },
    async tally() {
      const text = existsSync(mx.maillog) ? await readFile(mx.maillog, 'utf8') : '';
      return {
        arrivals: [...text.matchAll(/postfix\/discard\[\d+\]: \w+: to=<([abc]\d+)@capped\.example>/g)].map((m) => m[1]),
        refused: (text.match(/Connection concurrency limit exceeded/g) ?? []).length,
        connections: (text.match(/postfix\/smtpd\[\d+\]: connect from/g) ?? []).length,
        mxPeak: Math.max(0, ...[...text.matchAll(/statistics: max connection count (\d+) for \(smtp:[\d.]+\)|statistics: max connection count (\d+) for/g)].map((m) => Number(m[1] ?? m[2]))),
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

export interface CappedClusterRun {
  total: number;
  arrived: number;
  unique: number;
  /** The most connections from our address the MX counted at once (its own count, anvil's statistics). */
  peak: number;
  /** The most connections the nodes held open to the MX at once, sampled every 10 ms at their side (a sample may catch one closing as the next opens). */
  sampledPeak: number;
  refused: number;
  /** Jain's index of the tenants' deliveries while all three had mail waiting. */
  jain: number;
  shares: Record<string, number>;
  perConnection: number;
  submitFailures: number;
  ms: number;
  /** Redis commands the nodes sent during the delivery phase (round trips at most). */
  redisCommands: number;
}

/**
 * Three nodes, three tenants, the capped MX: every tenant's mail is queued on every node first
 * (delivery suspended), then delivery starts everywhere at once (SIGHUP), so all three tenants have
 * mail waiting from the first moment.
 */
export async function runCappedCluster(perNodePerTenant: number, boundMs: number): Promise<CappedClusterRun> {
  // The production lease time: this run is about sharing the cap among live nodes. With a short
  // lease, a node the loaded machine leaves unscheduled for most of it loses its leases in Redis
  // while its connections stay open; lapsed leases are cluster-failures.test.ts's subject.
  const world = await startClusterWorld({ nodes: 3, suspended: true, leaseTtl: '10s' });
  try {
    const nodes = await Promise.all([0, 1, 2].map((i) => world.node(i)));
    const submitters: Submitter[] = [];
    nodes.forEach((node, n) => {
      for (const [tenant, address] of Object.entries(TENANTS)) {
        const s = new Submitter(tenant, address, node.ports.mx, 2, 2048);
        s.submit(Array.from({ length: perNodePerTenant }, (_, i) => {
          const seq = n * perNodePerTenant + i + 1;
          return { seq, to: `${tenant}${seq}@capped.example` };
        }));
        submitters.push(s);
      }
    });
    const total = perNodePerTenant * 3 * 3;
    await Promise.all(submitters.map((s) => s.drain(boundMs)));
    const sent = async () => (await Promise.all([0, 1, 2].map((i) => world.metric(i, 'ichidan_cluster_redis_commands_total')))).reduce((a, b) => a + b, 0);
    const commandsBefore = await sent();
    // Our connections, as the nodes hold them; the MX's own count shows in its refusals.
    const sampler = sampleConnections(MX, world.mx.port, 10, 'client');
    const started = Date.now();
    await world.resume();
    let tally = await world.tally();
    while (tally.arrivals.length < total && Date.now() - started < boundMs) {
      await new Promise((r) => setTimeout(r, 250));
      tally = await world.tally();
    }
    const ms = Date.now() - started;
    const sampledPeak = sampler.stop();
    // anvil writes its statistics once a second: the last second's too.
    await new Promise((r) => setTimeout(r, 1500));
    tally = await world.tally();
    const redisCommands = (await sent()) - commandsBefore;
    await Promise.all(submitters.map((s) => s.stop()));
    const perTenant = total / 3;
    const shares: Record<string, number> = { a: 0, b: 0, c: 0 };
    for (const r of tally.arrivals) {
      shares[r[0]]++;
      if (shares[r[0]] === perTenant) break;
    }
    return {
      total, arrived: tally.arrivals.length, unique: new Set(tally.arrivals).size, peak: tally.mxPeak, sampledPeak, refused: tally.refused,
      jain: jain(Object.values(shares)), shares, perConnection: tally.arrivals.length / Math.max(1, tally.connections),
      submitFailures: submitters.reduce((n, s) => n + s.failed, 0), ms, redisCommands,
    };
  } finally {
    await world.stop();
  }
}
