/*
 * Ichidan and Postfix side by side, on the same machine in the same run: the seed's three
 * experiments (congestion isolation, resource use, connection cap and fairness) and the durable
 * relay throughput workloads, each repeated, the two relays taking turns (which goes first
 * alternates between repetitions), so that a noisy machine shows as spread and not as bias.
 *
 * Run (as root, with Debian's postfix package; about 15-20 minutes with the defaults):
 *   npm run build && npm run bench:compare
 * Settings (environment): BENCH_REPS (3); BENCH_ONLY=1,3 runs only those experiments (4 is the
 * throughput workloads). Experiment 1: BENCH_PERIOD_MS (2000), BENCH_DURATION_MS (30000),
 * BENCH_C_BURST (200), BENCH_TARPIT_MS (5000), BENCH_DRAIN_MS (15000). Experiment 2:
 * BENCH_TENANT_N (messages per tenant, 3000), BENCH_BATCH_TIMEOUT_MS (180000). Experiment 3:
 * BENCH_FAIR_N (1000 per tenant), BENCH_FAIR_TIMEOUT_MS (90000), BENCH_FAIR_STALL_MS (10000).
 * Experiment 4: BENCH_COUNT_2K (3000), BENCH_COUNT_64K (800), BENCH_SESSIONS (20).
 * BENCH_DIAGNOSTICS=0 skips the two closing Ichidan runs that explain its figures: the first
 * throughput workload under `node --cpu-prof`, and experiment 2 with `delivery.transcripts` off.
 * ICHIDAN_CLI=/path/to/dist/mta/mta-main.js measures another build: a copy of dist/ taken before
 * the run keeps a rebuild during the run from mixing two versions into one table.
 *
 * Gives: a line per run as it ends; then bench/results/compare-<date>.md (the headline table,
 * a table per experiment, the plots, the diagnostic runs), compare-<date>.json (every run's figures)
 * and compare-<date>-*.svg; the headline table is printed at the end. `npm run bench:compare --
 * --report bench/results/compare-<date>.json` writes the report and plots again from saved figures.
 * Network: everything on 127.0.0.x; Postfix routes by transport map to bracketed addresses with DNS
 * off, Ichidan by static routes with no resolver configured.
 * Last line: `RESULT {json}` (bench-result.ts), every figure of the run by its path (isolation,
 *   resources, fairness, throughput).
 */
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { cpus, totalmem } from 'node:os';
import { basename, dirname, join } from 'node:path';
import { runBatch, smtpSourceLoad, startSmtpSink, type BatchResult } from './bench-compare-batch.js';
import { FAIRNESS_VARIANTS, fairnessRun, type FairnessResult } from './bench-compare-fairness.js';
import { isolationRun, type IsolationResult, type IsolationSettings } from './bench-compare-isolation.js';
import { writeIsolationPlots } from './bench-compare-plots.js';
import { headlineTable, markdownReport, type CompareResults } from './bench-compare-report.js';
import { cleanUp, cleanUpOnSignals } from './bench-cleanup.js';
import { CLI } from './bench-ichidan.js';
import { summarizeProfiles } from './bench-profile.js';
import { TENANT_ADDRESS, TENANTS, type RelayKind } from './bench-relays.js';
import { Submitter } from './bench-submit.js';
import { printResult } from './bench-result.js';

const ROOT = join(import.meta.dirname, '..', '..');
const env = (name: string, fallback: number) => Number(process.env[name] ?? fallback);
const REPS = env('BENCH_REPS', 3);
const ONLY = process.env.BENCH_ONLY?.split(',').map(Number);
const runs = (experiment: number) => !ONLY || ONLY.includes(experiment);

const ISOLATION: IsolationSettings = {
  periodMs: env('BENCH_PERIOD_MS', 2000), durationMs: env('BENCH_DURATION_MS', 30_000), cBurst: env('BENCH_C_BURST', 200),
  tarpitMs: env('BENCH_TARPIT_MS', 5000), drainMs: env('BENCH_DRAIN_MS', 15_000),
};
const TENANT_N = env('BENCH_TENANT_N', 3000);
const BATCH_TIMEOUT_MS = env('BENCH_BATCH_TIMEOUT_MS', 180_000);
const FAIR = { perTenant: env('BENCH_FAIR_N', 1000), timeoutMs: env('BENCH_FAIR_TIMEOUT_MS', 90_000), stallMs: env('BENCH_FAIR_STALL_MS', 10_000) };
const SESSIONS = env('BENCH_SESSIONS', 20);
const WORKLOADS = [
  { name: '2 KB, one message per connection', size: 2048, count: env('BENCH_COUNT_2K', 3000), reuse: false },
  { name: '2 KB, connections reused', size: 2048, count: env('BENCH_COUNT_2K', 3000), reuse: true },
  { name: '64 KB, one message per connection', size: 65536, count: env('BENCH_COUNT_64K', 800), reuse: false },
  { name: '64 KB, connections reused', size: 65536, count: env('BENCH_COUNT_64K', 800), reuse: true },
];
const DIAGNOSTICS = process.env.BENCH_DIAGNOSTICS !== '0';

/** Experiment 2's load: each tenant's MUAs (five connections each) send N messages at once. */
function tenantsLoad(perTenant: number): (port: number) => Promise<void> {
  return async (port) => {
    const submitters = TENANTS.map((t) => new Submitter(t, TENANT_ADDRESS[t], port, 5));
    for (const s of submitters) s.submit(Array.from({ length: perTenant }, (_, i) => ({ seq: i + 1, to: `${s.tenant}${i + 1}@sink.example` })));
    await Promise.all(submitters.map((s) => s.drain(BATCH_TIMEOUT_MS)));
    const failed = submitters.reduce((n, s) => n + s.failed, 0);
    for (const s of submitters) await s.stop();
    if (failed) throw new Error(`${failed} submissions failed`);
  };
}

const fmtBatch = (r: BatchResult) => `${r.delivered}/${r.messages} in ${r.seconds.toFixed(1)} s = ${r.rate.toFixed(0)} msg/s, `
  + `p50/p99 ${r.p50.toFixed(0)}/${r.p99.toFixed(0)} ms, CPU ${r.cpuMsPerMessage.toFixed(2)} ms/msg, `
  + `busiest thread ${r.busiestThread.name} ${(r.busiestThread.coreShare * 100).toFixed(0)} %, disk ${(r.diskBytesPerMessage / 1024).toFixed(1)} KB/msg, `
  + `peak RSS ${(r.peakRss / 2 ** 20).toFixed(0)} MB`;

function machine(): CompareResults['machine'] {
  const version = (cmd: string, args: string[]) => {
    try { return execFileSync(cmd, args, { encoding: 'utf8' }).trim(); } catch { return 'unknown'; }
  };
  return {
    cpus: cpus().length, cpuModel: cpus()[0]?.model ?? 'unknown', memoryGB: Math.round(totalmem() / 2 ** 30),
    kernel: version('uname', ['-r']), node: process.version,
    postfix: version('postconf', ['-dh', 'mail_version']),
    // The code under test: the commit, and whether the relay's folders differed from it.
    ichidan: `${version('git', ['-C', ROOT, 'rev-parse', '--short', 'HEAD'])}${version('git', ['-C', ROOT, 'status', '--porcelain', '--', 'mta', 'queue', 'delivery', 'engines']) ? ' with uncommitted changes' : ''}, ${CLI}`,
    os: /^PRETTY_NAME="?([^"\n]*)/m.exec(existsSync('/etc/os-release') ? readFileSync('/etc/os-release', 'utf8') : '')?.[1] ?? 'unknown',
  };
}

async function main(): Promise<void> {
  for (const tool of ['smtp-source', 'smtp-sink', 'postconf']) {
    try { execFileSync('which', [tool]); } catch { throw new Error(`${tool} not found: install Debian's postfix package`); }
  }
  if (process.getuid?.() !== 0) throw new Error('run as root: the private Postfix instances and /proc/PID/io need it');
  const started = Date.now();
  const results: CompareResults = {
    when: new Date().toISOString(), machine: machine(),
    command: `${Object.entries(process.env).filter(([k]) => k.startsWith('BENCH_') || k === 'ICHIDAN_CLI').map(([k, v]) => `${k}=${v} `).join('')}npm run bench:compare`,
    settings: { reps: REPS, isolation: ISOLATION, tenantN: TENANT_N, fairness: FAIR, sessions: SESSIONS, workloads: WORKLOADS },
    isolation: [], resources: [], fairness: [], throughput: [],
  };
  const sink = await startSmtpSink();
  const sinkRoutes = { 'sink.example': sink.route, 'far.test': sink.route };
  for (let rep = 1; rep <= REPS; rep++) {
    const order: RelayKind[] = rep % 2 ? ['postfix', 'ichidan'] : ['ichidan', 'postfix'];
    console.log(`\nrepetition ${rep} of ${REPS} (${order.join(' first, then ')})`);
    if (runs(1)) {
      for (const tarpit of [false, true]) {
        for (const kind of order) {
          const r: IsolationResult = await isolationRun(kind, tarpit, ISOLATION);
          results.isolation.push({ ...r, rep });
          const p = r.perTenant;
          const lat = (t: 'a' | 'b') => `${t.toUpperCase()} p99 ${p[t].censored ? '≥' : ''}${p[t].p99} ms (${p[t].delivered}/${p[t].submitted})`;
          console.log(`  1 ${kind.padEnd(7)} ${tarpit ? 'tarpit ' : 'healthy'}: ${lat('a')}, ${lat('b')}, C delivered ${p.c.delivered}/${p.c.submitted}`);
        }
      }
    }
    if (runs(2)) {
      for (const kind of order) {
        const r = await runBatch(kind, { routes: sinkRoutes, load: tenantsLoad(TENANT_N), messages: 3 * TENANT_N, timeoutMs: BATCH_TIMEOUT_MS });
        results.resources.push({ ...r, rep });
        console.log(`  2 ${kind.padEnd(7)} ${fmtBatch(r)}`);
      }
    }
    if (runs(3)) {
      for (const variant of rep % 2 ? FAIRNESS_VARIANTS : [...FAIRNESS_VARIANTS].reverse()) {
        const r: FairnessResult = await fairnessRun(variant, FAIR.perTenant, FAIR.timeoutMs, FAIR.stallMs);
        results.fairness.push({ ...r, rep });
        const tenants = TENANTS.map((t) => `${t.toUpperCase()} ${r.perTenant[t].delivered} in ${r.perTenant[t].seconds.toFixed(1)} s`).join(', ');
        console.log(`  3 ${variant.name}: ${tenants}; Jain ${r.jain.toFixed(3)}, refused ${r.refused}, peak ${r.peakConnections} connections`);
      }
    }
    if (runs(4)) {
      for (const w of WORKLOADS) {
        for (const kind of order) {
          const r = await runBatch(kind, { routes: sinkRoutes, load: smtpSourceLoad(w.count, w.size, SESSIONS, w.reuse), messages: w.count, timeoutMs: BATCH_TIMEOUT_MS });
          results.throughput.push({ ...r, rep, workload: w.name });
          console.log(`  4 ${kind.padEnd(7)} ${w.name}: ${fmtBatch(r)}`);
        }
      }
    }
  }
  if (DIAGNOSTICS && runs(4)) {
    const w = WORKLOADS[0];
    const dir = await mkdtemp(join(ROOT, 'var', 'bench-profile-'));
    try {
      const r = await runBatch('ichidan', { routes: sinkRoutes, load: smtpSourceLoad(w.count, w.size, SESSIONS, w.reuse), messages: w.count,
        timeoutMs: BATCH_TIMEOUT_MS, plan: { ichidanNodeArgs: ['--cpu-prof', `--cpu-prof-dir=${dir}`] } });
      results.profile = { workload: w.name, result: r, summaries: await summarizeProfiles(dir) };
      console.log(`\n  profiled Ichidan run, ${w.name}: ${fmtBatch(r)}`);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  }
  if (DIAGNOSTICS && runs(2)) {
    results.withoutTranscripts = await runBatch('ichidan', { routes: sinkRoutes, load: tenantsLoad(TENANT_N), messages: 3 * TENANT_N,
      timeoutMs: BATCH_TIMEOUT_MS, plan: { ichidanDelivery: { transcripts: { enabled: false } } } });
    console.log(`  experiment 2 once more, Ichidan without delivery transcripts: ${fmtBatch(results.withoutTranscripts)}`);
  }
  await sink.stop();
  results.minutes = (Date.now() - started) / 60_000;

  const dir = join(ROOT, 'bench', 'results');
  await mkdir(dir, { recursive: true });
  const prefix = `compare-${results.when.slice(0, 10)}${ONLY ? `-only${ONLY.join('')}` : ''}`;
  await writeFile(join(dir, `${prefix}.json`), JSON.stringify(results, null, 2) + '\n');
  await writeReport(results, dir, prefix);
  // Last, after the report's table: the figures by name.
  printResult({ isolation: results.isolation, resources: results.resources, fairness: results.fairness, throughput: results.throughput });
}

/** The Markdown report and the plots beside the JSON, and the headline table on stdout. */
async function writeReport(results: CompareResults, dir: string, prefix: string): Promise<void> {
  const plots = results.isolation.length ? await writeIsolationPlots(results.isolation, join(dir, prefix)) : [];
  await writeFile(join(dir, `${prefix}.md`), markdownReport(results, plots.map((f) => basename(f))));
  console.log(`\n${headlineTable(results)}\nwritten: ${[`${prefix}.md`, `${prefix}.json`, ...plots.map((f) => basename(f))].join(', ')} in ${dir}`);
}

/** `--report FILE.json`: the report again from a run's saved figures (after a change to the report's layout, say). */
async function rewriteReport(file: string): Promise<void> {
  const results = JSON.parse(await readFile(file, 'utf8')) as CompareResults;
  await writeReport(results, dirname(file), basename(file, '.json'));
}

cleanUpOnSignals();
// Exits explicitly: a socket some library keeps open must not keep the benchmark running.
(process.argv[2] === '--report' ? rewriteReport(process.argv[3]) : main()).then(async () => {
  await cleanUp();
  process.exit(0);
}, async (err: Error) => {
  console.error(err.stack ?? err.message);
  await cleanUp();
  process.exit(1);
});
