/*
 * The cluster benchmark: the durable relay workloads of `npm run bench` (smtp-source → relay →
 * smtp-sink, fsync before every 250; 2 KB messages, one per connection and connections reused)
 * through, in one run on this machine: one Ichidan process without Redis (`workers1`), Ichidan
 * with `--workers 2` sharing a real redis-server (`workers2`), and Postfix.
 *
 * Prints per workload and relay messages/s and CPU ms per message (the relay's whole process
 * tree: a primary and its workers, Postfix's master and its daemons), the ratios workers2 /
 * workers1, workers1 / postfix and workers2 / postfix, and the Redis commands per delivered
 * message, counted at the server (INFO's total_commands_processed from the start of the load to
 * the last delivery, every node's heartbeat included), with the commands that made them.
 * Then the capped-MX fairness figures across three nodes (see `fairness` below). Ends with `RESULT {json}`: `workers1_msgs`, `workers2_msgs`, `postfix_msgs`
 * and `redis_ops_per_msg` (2 KB, connections reused), every figure per workload, and the
 * fairness figures (`cap`, `peak`, `refusals`, `jain`, `lost`) when measured.
 *
 * Run (root, dist/ built, Debian's postfix and redis-server): npm run bench:cluster
 *   BENCH_COUNT (default 10000 per run), BENCH_SESSIONS (20), BENCH_TIMEOUT_S (180 per run),
 *   BENCH_POSTFIX=0 skips Postfix; NODE_CLUSTER_SCHED_POLICY=none|rr overrides how the primary
 *   spreads connections (mta/mta-workers.ts says which it uses, and why).
 * Network: loopback only (relays on 127.0.0.1, smtp-sink on 127.0.0.2, Redis on 127.0.0.1).
 */
import { cpus } from 'node:os';
import { runBatch, smtpSourceLoad, startSmtpSink, type BatchResult } from './bench-compare-batch.js';
import { cleanUp, cleanUpOnSignals, onCleanup } from './bench-cleanup.js';
import type { RelayPlan, RelayKind } from './bench-relays.js';
import { printResult } from './bench-result.js';
import type { Redis } from 'ioredis';
import { startRedis, type TestRedis } from '../test/helpers/redis.js';
import { CAP, runCappedCluster } from '../test/helpers/cluster-world.js';

const COUNT = Number(process.env.BENCH_COUNT ?? 10_000);
const SESSIONS = Number(process.env.BENCH_SESSIONS ?? 20);
const TIMEOUT_MS = Number(process.env.BENCH_TIMEOUT_S ?? 180) * 1000;
const WITH_POSTFIX = process.env.BENCH_POSTFIX !== '0';
const SIZE = 2048;

const WORKLOADS = [
  { workload: '2KB one per connection', reuse: false },
  { workload: '2KB reused', reuse: true },
];

interface Contender { name: 'workers1' | 'workers2' | 'postfix'; kind: RelayKind; plan: (redis: TestRedis) => Omit<RelayPlan, 'routes'> }

const CONTENDERS: Contender[] = [
  { name: 'workers1', kind: 'ichidan', plan: () => ({}) },
  { name: 'workers2', kind: 'ichidan', plan: (redis) => ({ ichidanCluster: { redis: redis.url, node: 'bench' }, ichidanArgs: ['--workers', '2'] }) },
  ...(WITH_POSTFIX ? [{ name: 'postfix', kind: 'postfix', plan: () => ({}) } satisfies Contender] : []),
];

/** The capped-MX fairness figures across three nodes, from the run that measures them. */
export interface FairnessFigures { cap: number; peak: number; refusals: number; jain: number; lost: number }

/**
 * The capped-MX fairness run (test/helpers/cluster-world.ts: three nodes as processes, three
 * tenants, a real Postfix MX capped at 10 connections per client address, a Redis of its own):
 * `BENCH_CAPPED` messages per node and tenant (250), queued everywhere before delivery starts.
 * Its figures are printed and join RESULT; BENCH_CAPPED=0 leaves it out.
 */
const CAPPED = Number(process.env.BENCH_CAPPED ?? 250);
const fairness: (() => Promise<FairnessFigures>) | null = CAPPED > 0 ? async () => {
  const run = await runCappedCluster(CAPPED, TIMEOUT_MS);
  console.log(`  ${run.arrived}/${run.total} arrived in ${(run.ms / 1000).toFixed(1)} s; shares until the first tenant was done ${JSON.stringify(run.shares)}; `
    + `${run.perConnection.toFixed(1)} messages per connection; ${(run.redisCommands / run.arrived).toFixed(3)} Redis commands sent per message`);
  return { cap: CAP, peak: run.peak, refusals: run.refused, jain: run.jain, lost: run.total - run.unique };
} : null;

async function redisCommands(client: Redis): Promise<number> {
  const info = await client.info('stats');
  // INFO is itself a command: the reading after this one counts it, so take it back out.
  return Number(/total_commands_processed:(\d+)/.exec(info)![1]) - 1;
}

/** Commands by name the Redis processed since its stats were last reset (INFO commandstats). */
async function commandStats(client: Redis): Promise<Record<string, number>> {
  const info = await client.info('commandstats');
  const out: Record<string, number> = {};
  for (const m of info.matchAll(/^cmdstat_([^:]+):calls=(\d+)/gm)) if (m[1] !== 'info' && m[1] !== 'config') out[m[1]] = Number(m[2]);
  return out;
}

const fmt = (name: string, r: BatchResult) =>
  `  ${name.padEnd(9)} ${r.rate.toFixed(0).padStart(6)} msg/s  ${r.cpuMsPerMessage.toFixed(2).padStart(6)} CPU ms/msg  `
  + `${r.delivered}/${r.messages} delivered in ${r.seconds.toFixed(1)} s  busiest thread ${(r.busiestThread.coreShare * 100).toFixed(0)} % of a core`;

async function main(): Promise<void> {
  cleanUpOnSignals();
  const redis = await startRedis();
  onCleanup(() => redis.stop());
  // One client for the readings, connected before the first: connecting sends commands of its own.
  const client = redis.client();
  await client.ping();
  const sink = await startSmtpSink();
  const rows: Array<Record<string, unknown>> = [];
  console.log(`${COUNT} messages of ${SIZE} bytes per run, ${SESSIONS} sessions, ${cpus().length} cores`);
  for (const w of WORKLOADS) {
    console.log(`${w.workload}:`);
    const row: Record<string, unknown> = { workload: w.workload };
    const runs: Partial<Record<Contender['name'], BatchResult>> = {};
    for (const c of CONTENDERS) {
      await client.config('RESETSTAT');
      const r = await runBatch(c.kind, {
        routes: { 'far.test': sink.route }, load: smtpSourceLoad(COUNT, SIZE, SESSIONS, w.reuse), messages: COUNT,
        timeoutMs: TIMEOUT_MS, plan: c.plan(redis), counter: () => redisCommands(client),
      });
      if (r.delivered < COUNT) throw new Error(`${c.name}: only ${r.delivered} of ${COUNT} delivered within ${TIMEOUT_MS / 1000} s`);
      runs[c.name] = r;
      console.log(fmt(c.name, r));
      row[c.name] = { rate: r.rate, cpuMsPerMessage: r.cpuMsPerMessage, seconds: r.seconds };
      if (c.name === 'workers2') {
        const perMessage = (r.counted ?? 0) / r.delivered;
        const byCommand = await commandStats(client);
        row.redisOpsPerMessage = perMessage;
        console.log(`  Redis: ${perMessage.toFixed(3)} commands per delivered message (${r.counted} during the load); whole run incl. start and stop: `
          + (Object.entries(byCommand).map(([k, v]) => `${k} ${v}`).join(', ') || 'none'));
      }
    }
    const ratio = (a?: BatchResult, b?: BatchResult) => (a && b ? a.rate / b.rate : undefined);
    const ratios = { workers2ToWorkers1: ratio(runs.workers2, runs.workers1), workers1ToPostfix: ratio(runs.workers1, runs.postfix), workers2ToPostfix: ratio(runs.workers2, runs.postfix) };
    console.log(`  ratios: ${Object.entries(ratios).filter(([, v]) => v !== undefined).map(([k, v]) => `${k} ${v!.toFixed(2)}x`).join(', ')}`);
    rows.push({ ...row, ...ratios });
  }
  const headline = rows.find((r) => r.workload === '2KB reused')!;
  const rate = (name: string) => (headline[name] as { rate: number } | undefined)?.rate;
  const result: Record<string, unknown> = {
    workers1_msgs: rate('workers1'), workers2_msgs: rate('workers2'), postfix_msgs: rate('postfix'),
    redis_ops_per_msg: headline.redisOpsPerMessage,
    workloads: rows,
  };
  if (fairness) {
    console.log('capped MX across three nodes:');
    const f = await fairness();
    console.log(`  cap ${f.cap}, peak ${f.peak}, ${f.refusals} refusals, Jain ${f.jain.toFixed(4)}, ${f.lost} lost`);
    Object.assign(result, f);
  }
  await sink.stop();
  printResult(result);
}

try {
  await main();
} finally {
  await cleanUp();
}
