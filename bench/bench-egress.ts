/*
 * The egress benchmark: does one tenant's slow destination hold back the others, and is a capped
 * destination shared fairly without tripping its cap?
 *
 * Run: `npm run build && npm run bench:egress` (about 75 s with the defaults, under 4 minutes
 * even when deliveries stall, every wait being bounded; everything on loopback, nothing needs
 * root; BENCH_ONLY=1 or 2 runs one experiment alone, its files named egress-<date>-only<N>). Ichidan runs as a child (`mta-main start`, fsync off, log level
 * warn) behind a DNS server and MX sinks started here, all on 127.0.0.x; tenants are told apart by
 * the address their MUA connects from (A 127.0.0.21, B .22, C .23).
 *
 * 1. Congestion isolation. Every BENCH_PERIOD_MS (2 s) tenants A and B each submit 10 messages to
 *    a.example / b.example and tenant C submits BENCH_C_BURST (200) to c.example, for
 *    BENCH_DURATION_MS (30 s); then A's and B's mail is waited for (at most BENCH_DRAIN_MS). Run
 *    twice: C's MX healthy, then C's MX a tarpit (every reply after BENCH_TARPIT_MS, 5 s). Latency
 *    is the sink's acceptance time minus the time the submitting client got its 250. Prints per
 *    run A's and B's delivered count and mean / p50 / p99 latency and C's delivered count, then
 *    A's and B's p99 with the tarpit over p99 without (target ≤ 1.2).
 * 2. Caps and fairness. The MX of capped.example refuses an 11th simultaneous connection from one
 *    client with 421; A, B and C each submit BENCH_FAIR_N (1000) messages to it at once, five
 *    SMTP connections each, and their mail is waited for (at most BENCH_FAIR_TIMEOUT_MS, 60 s).
 *    Prints per tenant its completion time (its first submission to the arrival of its last
 *    message) and throughput, Jain's index over the three throughputs (target
 *    ≥ 0.99), the connections the MX refused (target 0), the peak simultaneous connections it
 *    saw and its messages per connection.
 *
 * Gives: the figures on stdout; the per-second series of experiment 1 and every figure in
 * bench/results/egress-<date>.json; per run of experiment 1 two SVG plots in bench/results/
 * (cumulative messages per MX; mean latency per tenant, log scale).
 * Last line: `RESULT {json}` (bench-result.ts): p99_ratio_a, p99_ratio_b, jain, refused, peak, then
 *   every other figure by its path.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { openSync, readFileSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { startDns, type TestDns, type Zone } from '../test/helpers/dns-server.js';
import { startSink, type Sink, type SinkOptions, type SunkMessage } from '../test/helpers/sink.js';
import { linePlot } from './bench-plot.js';
import { Submitter } from './bench-submit.js';
import { freePort, waitForPort } from './bench-util.js';
import { printResult } from './bench-result.js';

const ROOT = join(import.meta.dirname, '..', '..');
const CLI = process.env.ICHIDAN_CLI ?? join(ROOT, 'dist', 'mta', 'mta-main.js');
const PERIOD_MS = Number(process.env.BENCH_PERIOD_MS ?? 2000);
const DURATION_MS = Number(process.env.BENCH_DURATION_MS ?? 30_000);
const AB_BURST = 10;
const C_BURST = Number(process.env.BENCH_C_BURST ?? 200);
const TARPIT_MS = Number(process.env.BENCH_TARPIT_MS ?? 5000);
const DRAIN_MS = Number(process.env.BENCH_DRAIN_MS ?? 20_000);
const FAIR_N = Number(process.env.BENCH_FAIR_N ?? 1000);
const FAIR_TIMEOUT_MS = Number(process.env.BENCH_FAIR_TIMEOUT_MS ?? 60_000);
const MESSAGE_SIZE = 2048;
const ONLY = process.env.BENCH_ONLY;

const TENANTS = ['a', 'b', 'c'] as const;
type Tenant = (typeof TENANTS)[number];
const CLIENT_ADDRESS: Record<Tenant, string> = { a: '127.0.0.21', b: '127.0.0.22', c: '127.0.0.23' };
const MX_ADDRESS = { a: '127.0.0.31', b: '127.0.0.32', c: '127.0.0.33', capped: '127.0.0.34' } as const;
type Mx = keyof typeof MX_ADDRESS;

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** Everything started so far, stopped newest first at the end, on error and on a signal. */
const cleanups: Array<() => Promise<void>> = [];
async function cleanUp(): Promise<void> {
  for (const stop of cleanups.splice(0).reverse()) await stop().catch((err: Error) => console.error(`cleanup: ${err.message}`));
}

function benchTag(m: SunkMessage): { tenant: Tenant; seq: number } | undefined {
  const headerEnd = m.data.indexOf('\r\n\r\n');
  const match = /^X-Bench: ([abc]) (\d+) /m.exec(m.data.subarray(0, headerEnd < 0 ? undefined : headerEnd).toString('latin1'));
  return match ? { tenant: match[1] as Tenant, seq: Number(match[2]) } : undefined;
}

/** Sinks on several addresses and one port (Ichidan's delivery.mxPort is a single number). */
async function startMxSinks(specs: Partial<Record<Mx, SinkOptions>>): Promise<{ port: number; sinks: Partial<Record<Mx, Sink>> }> {
  for (let attempt = 0; attempt < 20; attempt++) {
    const port = await freePort(MX_ADDRESS.a);
    const sinks: Partial<Record<Mx, Sink>> = {};
    try {
      for (const [mx, opts] of Object.entries(specs) as Array<[Mx, SinkOptions]>) sinks[mx] = await startSink({ ...opts, host: MX_ADDRESS[mx], port });
      const all = Object.values(sinks);
      cleanups.push(async () => { await Promise.all(all.map((s) => s.close())); });
      return { port, sinks };
    } catch (err) {
      await Promise.all(Object.values(sinks).map((s) => s.close()));
      if ((err as NodeJS.ErrnoException).code !== 'EADDRINUSE') throw err;
    }
  }
  throw new Error('no port free on all the MX addresses');
}

interface Mta { port: number; proc: ChildProcess; logFile: string }

/** Ichidan's warnings and errors during a run, one line per distinct message with its count. */
function logSummary(mta: Mta): string[] {
  const counts = new Map<string, number>();
  for (const line of readFileSync(mta.logFile, 'utf8').split('\n')) {
    let rec: { msg?: string; reason?: string };
    try {
      rec = JSON.parse(line) as typeof rec;
    } catch {
      continue; // not a log record (blank, or a line still being written)
    }
    const key = [rec.msg, rec.reason].filter(Boolean).join(': ');
    counts.set(key, (counts.get(key) ?? 0) + 1);
  }
  return [...counts].map(([msg, n]) => `${n} × ${msg}`);
}

async function startIchidan(dns: TestDns, mxPort: number): Promise<Mta> {
  const dir = await mkdtemp(join(ROOT, 'var', 'bench-egress-'));
  cleanups.push(() => rm(dir, { recursive: true, force: true }));
  const port = await freePort('127.0.0.1');
  const config = join(dir, 'config.yaml');
  await writeFile(config, [
    'hostname: bench.ichidan.test',
    `dataDir: ${dir}`,
    'log: { level: warn }',
    `dns: { servers: ["${dns.server}"] }`,
    `listeners: [{ name: mx, role: mx, address: 127.0.0.1, port: ${port}, tls: none }]`,
    'queue: { fsync: false, retryInitial: 1s, retryMax: 5s }',
    'tenants:',
    ...TENANTS.map((t) => `  ${t}: { networks: [${CLIENT_ADDRESS[t]}/32] }`),
    'delivery:',
    `  mxPort: ${mxPort}`,
    '  transcripts: { enabled: false }',
    '  mtaSts: { enabled: false }',
    '  site: { maxConnections: 20, initialConnections: 5 }',
    '  sites: { capped: { domains: ["capped.example"], maxConnections: 10, initialConnections: 10 } }',
    '',
  ].join('\n'));
  const logFile = join(dir, 'ichidan.log');
  const out = openSync(logFile, 'w');
  const proc = spawn(process.execPath, [CLI, 'start', '-c', config], { stdio: ['ignore', out, out] });
  const exited = new Promise<void>((r) => proc.once('exit', () => r()));
  cleanups.push(async () => {
    if (proc.exitCode !== null || proc.signalCode !== null || proc.pid === undefined) return;
    process.kill(proc.pid, 'SIGTERM');
    // A graceful stop waits for deliveries in flight, which the tarpit stretches: not worth waiting for.
    if (await Promise.race([exited.then(() => true), sleep(3000).then(() => false)])) return;
    process.kill(proc.pid, 'SIGKILL');
    await exited;
  });
  await waitForPort('127.0.0.1', port);
  return { port, proc, logFile };
}

function assertRunning(mta: Mta): void {
  if (mta.proc.exitCode !== null || mta.proc.signalCode !== null) {
    throw new Error(`Ichidan exited (${mta.proc.exitCode ?? mta.proc.signalCode}); its log ends:\n${readFileSync(mta.logFile, 'utf8').slice(-2000)}`);
  }
}

/** Waits until `done()` or `timeoutMs`, failing early if Ichidan dies. */
async function waitUntil(mta: Mta, done: () => boolean, timeoutMs: number): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (!done() && Date.now() < until) {
    assertRunning(mta);
    await sleep(100);
  }
}

function percentile(sorted: number[], q: number): number {
  return sorted.length ? sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * q))] : NaN;
}

interface Latency { delivered: number; submitted: number; mean: number; p50: number; p99: number }

function latencyOf(latencies: number[], submitted: number): Latency {
  const sorted = [...latencies].sort((x, y) => x - y);
  const mean = sorted.reduce((s, v) => s + v, 0) / sorted.length;
  return { delivered: sorted.length, submitted, mean: Math.round(mean), p50: Math.round(percentile(sorted, 0.5)), p99: Math.round(percentile(sorted, 0.99)) };
}

const ms = (v: number) => (Number.isNaN(v) ? '-' : `${v} ms`);

interface IsolationRun {
  name: string;
  tarpit: boolean;
  perTenant: Record<Tenant, Latency & { failed: number; dropped: number }>;
  ichidanLog: string[];
  /** Seconds since the first submission; per second, cumulative messages per MX and mean latency per tenant. */
  series: { t: number[]; received: Record<Tenant, number[]>; meanLatency: Record<Tenant, Array<number | null>> };
}

async function isolationRun(dns: TestDns, tarpit: boolean): Promise<IsolationRun> {
  const name = tarpit ? 'tarpit' : 'healthy';
  const { port: mxPort, sinks } = await startMxSinks({ a: {}, b: {}, c: tarpit ? { replyDelay: TARPIT_MS } : {} });
  const mta = await startIchidan(dns, mxPort);
  const submitters = { a: new Submitter('a', CLIENT_ADDRESS.a, mta.port, 2, MESSAGE_SIZE), b: new Submitter('b', CLIENT_ADDRESS.b, mta.port, 2, MESSAGE_SIZE), c: new Submitter('c', CLIENT_ADDRESS.c, mta.port, 5, MESSAGE_SIZE) };
  const seq: Record<Tenant, number> = { a: 0, b: 0, c: 0 };
  const t0 = Date.now();
  for (let tick = 0; tick * PERIOD_MS < DURATION_MS; tick++) {
    await sleep(t0 + tick * PERIOD_MS - Date.now());
    assertRunning(mta);
    for (const t of TENANTS) {
      const burst = t === 'c' ? C_BURST : AB_BURST;
      submitters[t].submit(Array.from({ length: burst }, () => ({ seq: ++seq[t], to: `user${seq[t]}@${t}.example` })));
    }
  }
  await sleep(t0 + DURATION_MS - Date.now());
  // C's MUA stops where the period ends; A's and B's are small and are let finish.
  const dropped = { a: 0, b: 0, c: await submitters.c.stop() };
  await Promise.all([submitters.a.drain(DRAIN_MS), submitters.b.drain(DRAIN_MS)]);
  dropped.a = await submitters.a.stop();
  dropped.b = await submitters.b.stop();
  const arrived = (t: 'a' | 'b') => sinks[t]!.messages.length >= submitters[t].accepted.size;
  await waitUntil(mta, () => arrived('a') && arrived('b'), DRAIN_MS);
  const end = Date.now();

  const buckets = Math.ceil((end - t0) / 1000);
  const series: IsolationRun['series'] = {
    t: Array.from({ length: buckets }, (_, i) => i + 1),
    received: { a: Array(buckets).fill(0), b: Array(buckets).fill(0), c: Array(buckets).fill(0) },
    meanLatency: { a: [], b: [], c: [] },
  };
  const perTenant = {} as IsolationRun['perTenant'];
  for (const t of TENANTS) {
    const sums = Array<number>(buckets).fill(0), counts = Array<number>(buckets).fill(0);
    const latencies: number[] = [];
    for (const m of sinks[t]!.messages) {
      const tag = benchTag(m);
      const acceptedAt = tag && tag.tenant === t ? submitters[t].accepted.get(tag.seq) : undefined;
      const bucket = Math.min(buckets - 1, Math.floor((m.at - t0) / 1000));
      series.received[t][bucket]++;
      if (acceptedAt === undefined) continue;
      latencies.push(m.at - acceptedAt);
      sums[bucket] += m.at - acceptedAt;
      counts[bucket]++;
    }
    for (let i = 1; i < buckets; i++) series.received[t][i] += series.received[t][i - 1];
    series.meanLatency[t] = sums.map((s, i) => (counts[i] ? Math.round(s / counts[i]) : null));
    perTenant[t] = { ...latencyOf(latencies, submitters[t].accepted.size), failed: submitters[t].failed, dropped: dropped[t] };
  }
  const ichidanLog = logSummary(mta);
  await cleanUp();
  return { name, tarpit, perTenant, series, ichidanLog };
}

function printRun(run: IsolationRun): void {
  console.log(`\n${run.name === 'tarpit' ? `C's MX a tarpit (every reply after ${TARPIT_MS} ms)` : "C's MX healthy"}:`);
  for (const t of TENANTS) {
    const r = run.perTenant[t];
    const notes = [r.failed ? `${r.failed} submissions refused` : '', r.dropped ? `${r.dropped} not submitted in time` : ''].filter(Boolean).join(', ');
    const figures = t === 'c' ? '' : `  latency mean ${ms(r.mean)}  p50 ${ms(r.p50)}  p99 ${ms(r.p99)}`;
    console.log(`  tenant ${t.toUpperCase()}: delivered ${r.delivered} of ${r.submitted}${figures}${notes ? `  (${notes})` : ''}`);
  }
  printLog(run.ichidanLog);
}

function printLog(lines: string[]): void {
  if (lines.length) console.log(`  Ichidan logged: ${lines.join('; ')}`);
}

async function plotRun(run: IsolationRun, prefix: string): Promise<string[]> {
  const received = linePlot({
    title: `Messages received per MX (${run.name})`, xLabel: 'seconds since the first submission', yLabel: 'messages (cumulative)',
    series: TENANTS.map((t) => ({ name: `mx.${t}.example`, points: run.series.t.map((x, i) => [x, run.series.received[t][i]]) })),
  });
  const latency = linePlot({
    title: `Mean delivery latency per tenant (${run.name})`, xLabel: 'seconds since the first submission', yLabel: 'ms (log scale)', logY: true,
    series: TENANTS.map((t) => ({ name: `tenant ${t.toUpperCase()}`, points: run.series.t.map((x, i) => [x, run.series.meanLatency[t][i]]) })),
  });
  const files = [`${prefix}-${run.name}-received.svg`, `${prefix}-${run.name}-latency.svg`];
  await writeFile(files[0], received);
  await writeFile(files[1], latency);
  return files;
}

interface FairnessResult {
  perTenant: Record<Tenant, { delivered: number; failed: number; seconds: number; rate: number }>;
  jain: number;
  refused: number;
  peakConnections: number;
  connections: number;
  messagesPerConnection: number;
  ichidanLog: string[];
}

async function fairnessRun(dns: TestDns): Promise<FairnessResult> {
  const { port: mxPort, sinks } = await startMxSinks({ capped: { maxConnectionsPerClient: 10 } });
  const sink = sinks.capped!;
  const mta = await startIchidan(dns, mxPort);
  const submitters = Object.fromEntries(TENANTS.map((t) => [t, new Submitter(t, CLIENT_ADDRESS[t], mta.port, 5, MESSAGE_SIZE)])) as Record<Tenant, Submitter>;
  for (const t of TENANTS) submitters[t].submit(Array.from({ length: FAIR_N }, (_, i) => ({ seq: i + 1, to: `${t}${i + 1}@capped.example` })));
  const until = Date.now() + FAIR_TIMEOUT_MS;
  await Promise.all(TENANTS.map((t) => submitters[t].drain(FAIR_TIMEOUT_MS)));
  const accepted = TENANTS.reduce((n, t) => n + submitters[t].accepted.size, 0);
  await waitUntil(mta, () => sink.messages.length >= accepted, until - Date.now());
  for (const t of TENANTS) await submitters[t].stop();

  const last: Record<Tenant, number> = { a: 0, b: 0, c: 0 };
  const delivered: Record<Tenant, number> = { a: 0, b: 0, c: 0 };
  for (const m of sink.messages) {
    const tag = benchTag(m);
    if (!tag) continue;
    delivered[tag.tenant]++;
    last[tag.tenant] = Math.max(last[tag.tenant], m.at);
  }
  const perTenant = {} as FairnessResult['perTenant'];
  for (const t of TENANTS) {
    const seconds = delivered[t] ? (last[t] - submitters[t].firstSubmission) / 1000 : NaN;
    perTenant[t] = { delivered: delivered[t], failed: submitters[t].failed, seconds, rate: delivered[t] ? delivered[t] / seconds : 0 };
  }
  const rates = TENANTS.map((t) => perTenant[t].rate);
  const jain = rates.reduce((s, x) => s + x, 0) ** 2 / (rates.length * rates.reduce((s, x) => s + x * x, 0));
  const result: FairnessResult = {
    perTenant, jain, refused: sink.refused, peakConnections: sink.peakConnections, connections: sink.connections,
    messagesPerConnection: sink.connections ? sink.messages.length / sink.connections : 0,
    ichidanLog: logSummary(mta),
  };
  await cleanUp();
  return result;
}

function printFairness(f: FairnessResult): void {
  console.log(`\nExperiment 2: caps and fairness (${FAIR_N} messages per tenant to capped.example, its MX refusing an 11th connection per client)`);
  for (const t of TENANTS) {
    const r = f.perTenant[t];
    const took = Number.isNaN(r.seconds) ? '' : ` in ${r.seconds.toFixed(1)} s, ${r.rate.toFixed(1)} messages/s`;
    console.log(`  tenant ${t.toUpperCase()}: ${r.delivered} of ${FAIR_N} delivered${took}${r.failed ? `  (${r.failed} submissions refused)` : ''}`);
  }
  console.log(`  Jain's fairness index over the throughputs: ${f.jain.toFixed(4)} (target ≥ 0.99)`);
  console.log(`  connections refused by the MX: ${f.refused} (target 0)`);
  console.log(`  peak simultaneous connections at the MX: ${f.peakConnections}`);
  console.log(`  messages per connection: ${f.messagesPerConnection.toFixed(1)} (${f.connections} connections)`);
  printLog(f.ichidanLog);
}

async function main(): Promise<void> {
  const zones: Record<string, Zone> = {};
  for (const mx of Object.keys(MX_ADDRESS) as Mx[]) {
    zones[`${mx}.example`] = { mx: [{ exchange: `mx.${mx}.example`, priority: 10 }] };
    zones[`mx.${mx}.example`] = { a: [MX_ADDRESS[mx]] };
  }
  const dns = await startDns(zones);
  try {
    const when = new Date().toISOString();
    const dir = join(ROOT, 'bench', 'results');
    await mkdir(dir, { recursive: true });
    // A single experiment's results must not overwrite a full run's.
    const prefix = join(dir, `egress-${when.slice(0, 10)}${ONLY ? `-only${ONLY}` : ''}`);
    const results: Record<string, unknown> = {
      when, node: process.version, cpus: (await readFile('/proc/cpuinfo', 'utf8')).match(/^processor/gm)?.length,
      settings: { periodMs: PERIOD_MS, durationMs: DURATION_MS, abBurst: AB_BURST, cBurst: C_BURST, tarpitMs: TARPIT_MS, drainMs: DRAIN_MS, fairN: FAIR_N, messageSize: MESSAGE_SIZE },
    };
    const written: string[] = [];
    if (ONLY !== '2') {
      console.log(`Experiment 1: congestion isolation (every ${PERIOD_MS} ms: A and B ${AB_BURST} messages each, C ${C_BURST}; for ${DURATION_MS / 1000} s)`);
      const healthy = await isolationRun(dns, false);
      printRun(healthy);
      const tarpit = await isolationRun(dns, true);
      printRun(tarpit);
      const ratio = { a: tarpit.perTenant.a.p99 / healthy.perTenant.a.p99, b: tarpit.perTenant.b.p99 / healthy.perTenant.b.p99 };
      console.log(`\n  p99 with the tarpit / without: A ${ratio.a.toFixed(2)}, B ${ratio.b.toFixed(2)} (target ≤ 1.2)`);
      results.isolation = { runs: [healthy, tarpit], p99Ratio: ratio };
      written.push(...await plotRun(healthy, prefix), ...await plotRun(tarpit, prefix));
    }
    if (ONLY !== '1') {
      const fairness = await fairnessRun(dns);
      printFairness(fairness);
      results.fairness = fairness;
    }
    await writeFile(`${prefix}.json`, JSON.stringify(results, null, 2) + '\n');
    console.log(`\nresults written to ${[`${prefix}.json`, ...written].map((f) => f.slice(dir.length + 1)).join(', ')} in ${dir}`);
    const p99Ratio = (results.isolation as { p99Ratio?: { a: number; b: number } } | undefined)?.p99Ratio;
    const fairness = results.fairness as { jain?: number; refused?: number; peakConnections?: number } | undefined;
    printResult({ isolation: results.isolation && { p99Ratio }, fairness: results.fairness },
      { p99_ratio_a: p99Ratio?.a, p99_ratio_b: p99Ratio?.b, jain: fairness?.jain, refused: fairness?.refused, peak: fairness?.peakConnections });
  } finally {
    await cleanUp();
    await dns.close();
  }
}

for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.once(signal, () => {
    cleanUp().finally(() => process.exit(130));
  });
}

// Exits explicitly: a socket some library keeps open must not keep the benchmark running.
main().then(() => process.exit(0), async (err: Error) => {
  console.error(err.stack ?? err.message);
  await cleanUp();
  process.exit(1);
});
