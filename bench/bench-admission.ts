/*
 * The admission benchmark: the seed paper's scenario on this machine. Known senders send at a
 * steady rate long enough to be learned; then a flood of unknown senders from many networks
 * arrives at several times what Ichidan can take, while the known senders go on. The same load,
 * in the same run, against Ichidan with `admission.mode: off`, with it `on`, and a Postfix with its
 * defaults. Each accepts mail into its queue and delivers nowhere.
 *
 * Steps:
 * 1. What can be taken, measured now (closed loop, BENCH_PROBE_SESSIONS senders for BENCH_PROBE_S):
 *    the generator alone against smtp-sink, Ichidan with its scanning engine (the flood's rate is
 *    BENCH_FLOOD_FACTOR times this), Postfix; and where the CPU went during Ichidan's probe, so the
 *    output says what bounds it.
 * 2. Per system: BENCH_NORMAL_S of known senders (BENCH_KNOWN_NETS /24s at 127.10.N.0, four hosts
 *    each, BENCH_KNOWN_RATE messages a second in all, one per connection), then BENCH_FLOOD_S with
 *    the flood added (any of the 16 384 /24s in 127.64.0.0/10, at most BENCH_FLOOD_INFLIGHT attempts
 *    in flight; sent from a worker thread at nice BENCH_FLOOD_NICE, 19, bench-admission-flood.ts), then BENCH_DRAIN_S for what is
 *    in flight; what is still open then counts as failed.
 *    Every message is timed from the start of connect to the reply after DATA.
 * Known senders' "before" leaves out the normal phase's first BENCH_WARMUP_S (process warm-up and
 * learning). Ichidan scans every message with BENCH_ENGINE (rspamd; clamd; none) from the running
 * engines (ICHIDAN_ENGINES_FILE, else state/engines/daemons.json); Postfix scans nothing. Ichidan's
 * learning writes every second here (`admission.senders.flushEvery: 1s`, default 5s), and the normal
 * connection rate is learned over the normal phase after its warm-up (`admission.pressure.learnAfter`,
 * BENCH_NORMAL_S - BENCH_WARMUP_S, default 5m); `minClean` keeps its default. Deferred mail is not retried within the run: a real sender would retry it.
 *
 * Gives: the table, the plot, bench/results/admission-<date>.json, and `RESULT {json}` last:
 * known_p99_before_ms, known_p99_flood_ms, known_refused, unknown_deferred, rss_mb (admission on),
 * the same prefixed off_ and postfix_, then the rest.
 * Run (root, dist/ built, Debian's postfix, the engines running): npm run bench:admission
 *   BENCH_POSTFIX=0 leaves Postfix out; BENCH_ADMISSION='{"knownQueueGuard":100}' adds admission
 *   settings for both Ichidan runs. About 4-5 minutes with the defaults.
 * Network: everything on 127.0.0.0/8; no DNS is configured anywhere.
 */
import { cpus, loadavg } from 'node:os';
import { monitorEventLoopDelay, type IntervalHistogram } from 'node:perf_hooks';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Clock, knownAddress, messageBody, network24, Pacer, saturate, type Attempt, type SenderPlan, type Target } from './bench-admission-load.js';
import { perSecond, plot, summarize, table, type Phases, type SystemFigures } from './bench-admission-report.js';
import { DOMAIN, enginePid, levelChanges, listenDrops, machineCpu, slowerThan, startSystem, type EngineChoice, type System, type SystemName } from './bench-admission-systems.js';
import { startSmtpSink } from './bench-compare-batch.js';
import { cleanUp, cleanUpOnSignals, sleep } from './bench-cleanup.js';
import { floodPlan, prepareFlood } from './bench-admission-flood.js';
import { cpuSeconds, processTree, sampleMemory, threadCpu } from './bench-proc.js';
import { printResult } from './bench-result.js';

const env = (name: string, fallback: number) => Number(process.env[name] ?? fallback);
const S = {
  knownRate: env('BENCH_KNOWN_RATE', 20),
  knownNets: env('BENCH_KNOWN_NETS', 5),
  normalS: env('BENCH_NORMAL_S', 20),
  warmupS: env('BENCH_WARMUP_S', 5),
  floodS: env('BENCH_FLOOD_S', 40),
  drainS: env('BENCH_DRAIN_S', 10),
  floodFactor: env('BENCH_FLOOD_FACTOR', 6),
  floodInFlight: env('BENCH_FLOOD_INFLIGHT', 1500),
  probeS: env('BENCH_PROBE_S', 5),
  probeSessions: env('BENCH_PROBE_SESSIONS', 40),
  timeoutS: env('BENCH_TIMEOUT_S', 30),
  size: env('BENCH_SIZE', 2048),
  /** The flood's thread's nice value (0: the same priority as everything else). */
  floodNice: env('BENCH_FLOOD_NICE', 19),
};
const ENGINE = (process.env.BENCH_ENGINE ?? 'rspamd') as EngineChoice;
/** The learning the benchmark shortens: known senders written every second, the normal connection rate learned over the normal phase after its warm-up. */
const LEARNING = { flushEvery: '1s', learnAfter: `${S.normalS - S.warmupS}s` };
const SYSTEMS: SystemName[] = ['off', 'on', ...(process.env.BENCH_POSTFIX === '0' ? [] : ['postfix' as const])];
const ROOT = join(import.meta.dirname, '..', '..');

const knownBody = messageBody(S.size, 'news@known.bench.test', `staff@${DOMAIN}`);

const knownPlan = (target: Target): SenderPlan => ({
  target, address: knownAddress(S.knownNets), timeoutMs: S.timeoutS * 1000,
  envelope: (n, address) => ({ from: `news@n${network24(address).split('.')[2]}.known.bench.test`, to: `staff${n % 50}@${DOMAIN}`, body: knownBody }),
});

/** CPU seconds of a process tree, the generator (this process) and the machine, read twice. */
function cpuMeter(rootPid: number, engine: number | null) {
  const read = () => ({
    server: cpuSeconds(processTree(rootPid)), engine: engine === null ? null : cpuSeconds(processTree(engine)),
    generator: (process.cpuUsage().user + process.cpuUsage().system) / 1e6, machine: machineCpu(), at: performance.now(),
  });
  const start = read();
  return () => {
    const end = read();
    const s = (end.at - start.at) / 1000;
    const share = (a: number, b: number) => (100 * (a - b)) / s;
    const server = share(end.server, start.server), engine = end.engine === null ? null : share(end.engine, start.engine!);
    const generator = share(end.generator, start.generator), machine = share(end.machine, start.machine);
    return { server, engine, generator, others: Math.max(0, machine - server - (engine ?? 0) - generator), machine: machine / cpus().length };
  };
}

interface Probe { rate: number; p50: number; p99: number; refused: number; cpu: ReturnType<ReturnType<typeof cpuMeter>>; busiestThread?: string }

/** Closed loop against the target for BENCH_PROBE_S (after a second's warm-up): accepted messages per second. */
async function probe(target: Target, rootPid: number | null): Promise<Probe> {
  const clock = new Clock();
  const plan = floodPlan(target, S.size, DOMAIN, S.timeoutS * 1000);
  await saturate(plan, clock, S.probeSessions, 1000);
  const threads0 = rootPid === null ? null : threadCpu(processTree(rootPid));
  const meter = cpuMeter(rootPid ?? process.pid, enginePid(ENGINE));
  const t0 = clock.now();
  const attempts = await saturate(plan, clock, S.probeSessions, S.probeS * 1000);
  const seconds = (clock.now() - t0) / 1000;
  const cpu = meter();
  const ok = attempts.filter((a) => a.outcome === 'accepted').map((a) => a.ms).sort((a, b) => a - b);
  let busiestThread: string | undefined;
  if (threads0 && rootPid !== null) {
    const after = threadCpu(processTree(rootPid));
    const top = [...after].map(([id, t]) => ({ name: t.name, share: (100 * (t.seconds - (threads0.get(id)?.seconds ?? 0))) / seconds })).sort((a, b) => b.share - a.share)[0];
    if (top) busiestThread = `${top.name} ${top.share.toFixed(0)} %`;
  }
  return { rate: ok.length / seconds, p50: ok[Math.floor(ok.length / 2)], p99: ok[Math.floor(ok.length * 0.99)], refused: attempts.length - ok.length, cpu, busiestThread };
}

async function probes(): Promise<{ generator: Probe; ichidan: Probe; postfix: Probe | null }> {
  const sink = await startSmtpSink();
  const generator = await probe({ host: sink.route.host, port: sink.route.port }, null);
  await sink.stop();
  const ich = await startSystem('off', ENGINE, LEARNING);
  const ichidan = await probe(ich.target, ich.rootPid);
  await ich.stop();
  let postfix: Probe | null = null;
  if (SYSTEMS.includes('postfix')) {
    const pf = await startSystem('postfix', ENGINE, LEARNING);
    postfix = await probe(pf.target, pf.rootPid);
    await pf.stop();
  }
  return { generator, ichidan, postfix };
}

function describeBound(p: Probe): string {
  const parts = [`Ichidan ${p.cpu.server.toFixed(0)} % of a core (busiest thread: ${p.busiestThread ?? '?'})`,
    ...(p.cpu.engine === null ? [] : [`${ENGINE} ${p.cpu.engine.toFixed(0)} %`]), `generator ${p.cpu.generator.toFixed(0)} %`,
    `other processes ${p.cpu.others.toFixed(0)} %`, `machine ${p.cpu.machine.toFixed(0)} % busy of ${cpus().length} cores`];
  const bound = p.cpu.machine >= 90 ? 'the machine\'s CPU (every core busy)'
    : /ichidan|node|main/i.test(p.busiestThread ?? '') && Number(/(\d+) %/.exec(p.busiestThread ?? '')?.[1]) >= 90 ? 'Ichidan\'s main thread'
      : `waiting on ${ENGINE === 'none' ? 'the spool (fsync)' : ENGINE} (neither Ichidan's thread nor the machine saturated)`;
  return `${parts.join(', ')}; bound by ${bound}`;
}

/** `point/action/reason n` of every admission decision counted, most first. */
function decisionCounts(lines: string[]): string {
  return lines.map((l) => /^ichidan_admission_decisions_total\{(.*)\} (\d+)/.exec(l)).filter((m) => m !== null)
    .map((m) => {
      const label = (k: string) => new RegExp(`${k}="([^"]*)"`).exec(m[1])?.[1] ?? '?';
      return { name: `${label('point')}/${label('action')}/${label('reason')}`, n: Number(m[2]) };
    })
    .sort((a, b) => b.n - a.n).map((d) => `${d.name} ${d.n}`).join(', ');
}

interface SystemRun { figures: SystemFigures; known: Attempt[]; levels: Array<string | null> | null }

/** The admission level once a second (GET /v1/admission), by second of the run, until stopped. */
function sampleLevels(system: System, clock: Clock): { stop(): Array<string | null> | null } {
  const levels: Array<string | null> = [];
  let measured = false;
  const timer = setInterval(() => {
    const s = Math.floor(clock.now() / 1000);
    system.admissionLevel().then((r) => {
      if (r?.measuring) measured = true;
      levels[s] = r?.level ?? null;
    }, () => undefined);
  }, 1000);
  return { stop: () => { clearInterval(timer); return measured ? Array.from(levels, (l) => l ?? null) : null; } };
}

async function runSystem(name: SystemName, floodRate: number): Promise<SystemRun> {
  const system: System = await startSystem(name, ENGINE, LEARNING);
  const memory = sampleMemory(system.rootPid);
  const meter = cpuMeter(system.rootPid, name === 'postfix' ? null : enginePid(ENGINE));
  const drops0 = listenDrops();
  const clock = new Clock();
  const wallStart = Date.now();
  const levelSampler = sampleLevels(system, clock);
  const flood = await prepareFlood({ target: system.target, rate: floodRate, maxInFlight: S.floodInFlight, size: S.size, timeoutMs: S.timeoutS * 1000, domain: DOMAIN, nice: S.floodNice }, clock);
  const known = new Pacer(knownPlan(system.target), clock, S.knownRate);
  // The generator's own event loop delay, before the flood and during it: the known senders' timings include it.
  await sleep(S.warmupS * 1000 - clock.now());
  const loopBefore = monitorEventLoopDelay({ resolution: 1 });
  loopBefore.enable();
  const timingAtWarm = await system.timingMetrics();
  await sleep(S.normalS * 1000 - clock.now());
  loopBefore.disable();
  system.assertRunning();
  const knownAtFlood = await system.knownNetworks();
  const timingAtFlood = await system.timingMetrics();
  const floodStart = clock.now();
  flood.start();
  const loopFlood = monitorEventLoopDelay({ resolution: 1 });
  loopFlood.enable();
  await sleep(floodStart + S.floodS * 1000 - clock.now());
  loopFlood.disable();
  const floodEnd = clock.now();
  const timingAtEnd = await system.timingMetrics();
  // The known senders' last messages end first, while the flood still runs: the flood's attempts,
  // handed over from its thread in one message at its stop, take this thread a while to take in.
  await known.stop(S.drainS * 1000);
  const flooded = await flood.stop(S.drainS * 1000);
  system.assertRunning();
  const cpu = meter();
  const drops = listenDrops() - drops0;
  const levels = levelSampler.stop();
  const peak = memory.stop();
  const rssMb = peak.rss / 2 ** 20, pssMb = peak.pss / 2 ** 20;
  const changes = levelChanges(system);
  const admissionLines = await system.admissionMetrics();
  const decisions = decisionCounts(admissionLines);
  const knownQueue = (metric: string) => admissionLines.filter((l) => l.startsWith(`ichidan_admission_known_queue_${metric}{`)).reduce((n, l) => n + Number(l.split(' ').at(-1)), 0);
  const knownAtEnd = await system.knownNetworks();
  await system.stop();
  const levelText = name === 'postfix' ? '-' : changes.length === 0 ? 'no change logged'
    : changes.map((c) => `${c.level}@${((c.at - wallStart) / 1000).toFixed(0)}s`).join(' ');
  const phases: Phases = { warmupEnd: S.warmupS * 1000, floodStart, floodEnd };
  const figures = summarize(name === 'postfix' ? 'postfix' : `ichidan ${name}`, known.attempts, flooded.attempts, flooded.skipped, phases, { listenDrops: drops, rssMb, pssMb, cpu, levels: levelText });
  const k = figures.knownFlood, u = figures.unknown;
  console.log(`  ${figures.system.padEnd(11)} known p99 ${figures.knownBefore.p99.toFixed(0)} → ${k.p99.toFixed(0)} ms, refused ${figures.knownRefused}; `
    + `unknown ${u.accepted} accepted, ${u.deferred} deferred of ${u.offered}; RSS ${rssMb.toFixed(0)} MB; ${known.cut + flooded.cut} cut at the end`);
  if (decisions) console.log(`    admission decisions: ${decisions}`);
  const p99 = (h: IntervalHistogram) => (h.percentile(99) / 1e6).toFixed(1);
  console.log(`    the generator's event loop delay p99: ${p99(loopBefore)} ms before the flood, ${p99(loopFlood)} ms during it`);
  // Where the tail is: the flood's slowest known messages, when each started and which part took the time.
  const slowest = known.attempts.filter((a) => a.outcome === 'accepted' && a.at >= floodStart && a.at < floodEnd).sort((a, b) => b.ms - a.ms).slice(0, 5);
  console.log(`    slowest known during the flood: ${slowest.map((a) => `${(a.at / 1000).toFixed(1)} s ${a.ms.toFixed(0)} ms (greeting ${a.greetMs?.toFixed(0) ?? '-'}, dot ${a.dotMs?.toFixed(0) ?? '-'})`).join('; ')}`);
  // What sets each p99: the ten slowest during the flood (its p99 is the 8th of 800), the five slowest before.
  const ladder = (from: number, to: number, n: number) => known.attempts.filter((a) => a.outcome === 'accepted' && a.at >= from && a.at < to)
    .map((a) => a.ms).sort((a, b) => b - a).slice(0, n).map((ms) => ms.toFixed(0)).join(' ');
  console.log(`    known ms, slowest before the flood: ${ladder(S.warmupS * 1000, floodStart, 5)}; during it: ${ladder(floodStart, floodEnd, 10)}`);
  if (timingAtEnd.length > 0) {
    // Inside Ichidan, where a message's time after its final dot goes: its scans and the spool's syncs, slower than 10 and 25 ms.
    const slow = (name: string) => {
      const [before, during] = [slowerThan(timingAtWarm, timingAtFlood, name, [0.01, 0.025]), slowerThan(timingAtFlood, timingAtEnd, name, [0.01, 0.025])];
      return `before ${before.over.join(' / ')} of ${before.n}, during ${during.over.join(' / ')} of ${during.n}`;
    };
    console.log(`    over 10 / 25 ms inside Ichidan: scans ${slow('ichidan_scan_seconds')}; spool syncs ${slow('ichidan_spool_fsync_seconds')}`);
  }
  if (admissionLines.some((l) => l.startsWith('ichidan_admission_known_queue_networks{'))) {
    console.log(`    known senders' own accept queue: ${knownQueue('networks')} networks steered to it at the end, ${knownQueue('connections_total')} connections taken, `
      + `${knownQueue('surges_total')} floods met by its guard`);
  }
  if (knownAtFlood && knownAtEnd) {
    const ours = (keys: string[]) => keys.filter((k) => k.startsWith('127.10.')).length;
    console.log(`    known networks: ${ours(knownAtFlood)} of the ${S.knownNets} known senders' at the flood's start (${knownAtFlood.length - ours(knownAtFlood)} others); `
      + `at the end ${ours(knownAtEnd)} of them, and ${knownAtEnd.length - ours(knownAtEnd)} flood networks learned as known`);
  }
  for (const c of changes) console.log(`    ${((c.at - wallStart) / 1000).toFixed(1).padStart(5)} s  ${c.previous} → ${c.level}: ${c.why}`);
  return { figures, known: known.attempts, levels };
}

async function main(): Promise<void> {
  cleanUpOnSignals();
  console.log(`admission benchmark: ${cpus().length} cores (load average ${loadavg().map((l) => l.toFixed(1)).join(' ')}), Node ${process.version}, `
    + `engine ${ENGINE}, ${S.size}-byte messages, one per connection`);
  console.log('step 1: what each can take (closed loop, '
    + `${S.probeSessions} senders for ${S.probeS} s)`);
  const p = await probes();
  const fmt = (x: Probe) => `${x.rate.toFixed(0)} msg/s (p50 ${x.p50?.toFixed(0)} ms, p99 ${x.p99?.toFixed(0)} ms, ${x.refused} not accepted)`;
  console.log(`  generator → smtp-sink:  ${fmt(p.generator)}, generator CPU ${p.generator.cpu.generator.toFixed(0)} % of a core`);
  console.log(`  Ichidan (${ENGINE}):     ${fmt(p.ichidan)}\n    ${describeBound(p.ichidan)}`);
  if (p.postfix) console.log(`  Postfix (no scanning): ${fmt(p.postfix)}, Postfix CPU ${p.postfix.cpu.server.toFixed(0)} %`);
  const floodRate = Math.round(p.ichidan.rate * S.floodFactor);
  console.log(`step 2: known senders ${S.knownRate} msg/s from ${S.knownNets} /24s for ${S.normalS} s, then for ${S.floodS} s a flood of `
    + `${floodRate} msg/s (${S.floodFactor}x Ichidan's ${p.ichidan.rate.toFixed(0)}) from 127.64.0.0/10, at most ${S.floodInFlight} in flight, sent at nice ${S.floodNice}; `
    + `timeout ${S.timeoutS} s a message; learning: admission.senders.flushEvery ${LEARNING.flushEvery}, minClean default, admission.pressure.learnAfter ${LEARNING.learnAfter}`);
  const runs: Partial<Record<SystemName, SystemRun>> = {};
  for (const name of SYSTEMS) runs[name] = await runSystem(name, floodRate);
  const rows = SYSTEMS.map((n) => runs[n]!.figures);
  console.log(`\n${table(rows)}\n`);
  const seconds = S.normalS + S.floodS + S.drainS;
  console.log(plot(SYSTEMS.map((n) => ({ system: runs[n]!.figures.system, values: perSecond(runs[n]!.known, seconds), levels: runs[n]!.levels ?? undefined })), S.normalS, S.normalS + S.floodS));
  const on = runs.on?.figures;
  if (on) {
    const ratio = on.knownFlood.p99 / on.knownBefore.p99;
    const met = ratio <= 1.5 && on.knownRefused === 0;
    console.log(`\ntarget (admission on): known p99 during the flood ≤ 1.5x before, 0 refused: ${met ? 'met' : 'NOT met'} `
      + `(${ratio.toFixed(2)}x, ${on.knownRefused} refused)`);
  }
  const when = new Date().toISOString();
  await mkdir(join(ROOT, 'bench', 'results'), { recursive: true });
  const file = join(ROOT, 'bench', 'results', `admission-${when.slice(0, 10)}.json`);
  const result = { when, node: process.version, cpus: cpus().length, engine: ENGINE, settings: S, floodRate, probes: p, systems: rows };
  await writeFile(file, JSON.stringify(result, null, 2) + '\n');
  console.log(`results written to ${file}`);
  const named: Record<string, number | undefined> = {};
  for (const [prefix, f] of [['', runs.on], ['off_', runs.off], ['postfix_', runs.postfix]] as const) {
    if (!f) continue;
    Object.assign(named, {
      [`${prefix}known_p99_before_ms`]: f.figures.knownBefore.p99, [`${prefix}known_p99_flood_ms`]: f.figures.knownFlood.p99,
      [`${prefix}known_refused`]: f.figures.knownRefused, [`${prefix}unknown_deferred`]: f.figures.unknown.deferred, [`${prefix}rss_mb`]: f.figures.rssMb,
    });
  }
  printResult({ capacity: { ichidan: p.ichidan.rate, postfix: p.postfix?.rate, generator: p.generator.rate }, floodRate,
    systems: Object.fromEntries(SYSTEMS.map((n) => [n, runs[n]!.figures])) }, named);
}

try {
  await main();
} finally {
  await cleanUp();
}
