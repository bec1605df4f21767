/*
 * The transparent proxy benchmark: relay throughput through the proxy against the same load sent
 * straight to the destination, in the same run, and the latency the proxy adds per transaction.
 *
 * Run: `npm run build && npm run bench:proxy` (as root: it makes network namespaces; under a
 * minute with the defaults). Two namespaces joined by a veth: the server one holds Ichidan (the
 * built CLI, its defaults but for one proxy listener on port 10025, the client subnet trusted and
 * MTA-STS off, data in a temporary folder under var/, log in its folder) and Postfix's smtp-sink
 * bound to 203.0.113.25:25, an address only that namespace has; in the client one,
 * test/helpers/pipelined-load.ts plays the legacy MTA and sends to 203.0.113.25:25 with
 * PIPELINING. With an iptables REDIRECT of that traffic to port 10025 in the server namespace,
 * the load goes through the proxy; without the rule, straight to smtp-sink.
 *
 * Two Ichidan processes run side by side, alike but for transcripts: on (the default, port 10025)
 * and off (port 10026); the REDIRECT names the port of the way measured.
 * Takes: BENCH_PROXY_N messages of 2 KB (default 2000) over BENCH_PROXY_SESSIONS sessions at once
 * (default 10), in two workloads: one message per connection, and connections reused. Each
 * workload runs three times each way (through the proxy with transcripts, without, and straight),
 * the order rotating every repetition, after one uncounted warm-up through each proxy; every run
 * must have every message accepted, and every connection greeted by the side it was meant to reach.
 * BENCH_PROXY_PIPELINING=0 makes the client wait for each reply instead (lockstep: MAIL FROM, RCPT TO
 * and DATA each written once the previous reply is read, as a client that does not pipeline), the
 * path on which the proxy lets the destination answer a connection's first MAIL FROM when the site is
 * known; everything else alike, the results in bench/results/proxy-lockstep-<date>.json.
 * BENCH_PROXY_PROFILE=DIR runs Ichidan with --cpu-prof, its profiles written to DIR; ICHIDAN_CLI=path/to/mta-main.js
 * runs another build (for before / after comparisons).
 * Gives: per workload and way the median of the three runs' messages/s (first connection to the
 * last final reply) and per-transaction latency p50 / p99 (from writing MAIL FROM to reading the
 * final reply, as the client sees it), the ratio of the rates and the added latency, and the
 * proxy process's CPU per message (user + system time of all its threads, from /proc/<pid>/stat
 * before and after the run, divided by the messages); on stdout
 * and in bench/results/proxy-<date>.json. Every process is stopped by its pid and the
 * namespaces deleted at the end, after a failure and on SIGINT / SIGTERM too.
 * Network: only inside its namespaces (192.0.2.0/24 on the veth, 203.0.113.25 in the server one).
 * Last line: `RESULT {json}` (bench-result.ts): proxy_msgs, straight_msgs, proxy_cpu_ms, added_p50_ms,
 *   added_p99_ms, and the same without transcripts (`_no_transcripts`), per workload by suffix
 *   (`_reused` for connections reused), then every figure by its path; with BENCH_PROXY_PIPELINING=0
 *   every name ends in `_lockstep` (`added_p50_ms_lockstep`, `proxy_msgs_reused_lockstep`).
 * BENCH_PROXY_RCPTS=N gives each message N recipients of the destination's domain (default 1); the
 *   workloads say so, every name ends in `_rcptsN` and the results go to proxy-rcptsN-<date>.json.
 */
import { closeSync, openSync, readFileSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { canUseNetns, NetnsLab } from '../test/helpers/netns.js';
import { printResult } from './bench-result.js';

const ROOT = join(import.meta.dirname, '..', '..');
const CLI = process.env.ICHIDAN_CLI ?? join(ROOT, 'dist', 'mta', 'mta-main.js');
const LOAD = join(ROOT, 'dist', 'test', 'helpers', 'pipelined-load.js');
const MESSAGES = Number(process.env.BENCH_PROXY_N ?? 2000);
const SESSIONS = Number(process.env.BENCH_PROXY_SESSIONS ?? 10);
/** The client pipelines (the default) or waits for each reply (BENCH_PROXY_PIPELINING=0). */
const PIPELINING = process.env.BENCH_PROXY_PIPELINING !== '0';
/** Recipients per message, all of the destination's domain (BENCH_PROXY_RCPTS, default 1). */
const RCPTS = Math.max(1, Math.floor(Number(process.env.BENCH_PROXY_RCPTS ?? 1)));
/** What the workloads' names, the RESULT line's names and the results file add for the mode and the recipients. */
const MODE = { label: `${PIPELINING ? '' : ', lockstep'}${RCPTS > 1 ? `, ${RCPTS} recipients` : ''}`, name: `${PIPELINING ? '' : '_lockstep'}${RCPTS > 1 ? `_rcpts${RCPTS}` : ''}`, file: `${PIPELINING ? '' : 'lockstep-'}${RCPTS > 1 ? `rcpts${RCPTS}-` : ''}` };
const MESSAGE_SIZE = 2048;
const REPETITIONS = 3;
const WARM_UP_MESSAGES = 200;
// Far beyond any healthy run (the generator itself gives up on a reply after 60 s).
const RUN_TIMEOUT_MS = 180_000;

const DESTINATION = '203.0.113.25';
/** Each Ichidan's proxy port: transcripts on (the default) and off. */
const PROXY_PORT = { proxy: 10025, proxy_nt: 10026 } as const;
const SERVER_ADDRESS = '192.0.2.1';
const CLIENT_ADDRESS = '192.0.2.2';
const SERVER_VETH = 'to-legacy';
// Every greeting says who gave it: Ichidan's proxy listener names itself, smtp-sink too.
const GREETING = { proxy: /Ichidan proxy$/, proxy_nt: /Ichidan proxy$/, direct: /^smtp-sink ESMTP/ };
const WAYS: Way[] = ['proxy', 'proxy_nt', 'direct'];

type Way = keyof typeof GREETING;

interface Workload { name: string; reuse: boolean }
/** In lockstep, or with several recipients, the workloads' names say so (and so do the RESULT line's paths through them). */
const WORKLOADS: Workload[] = [
  { name: `one message per connection${MODE.label}`, reuse: false },
  { name: `connections reused${MODE.label}`, reuse: true },
];

/**
 * The anchor: Warp with a 64 KB buffer, as issue 18 measured it on this machine (messages/s, CPU ms
 * per message, added p50 ms). Warp is not installed here: these are quoted, never run.
 */
const WARP = { false: { rate: 812, cpuMs: 1.23, addedP50: 4.2 }, true: { rate: 1931, cpuMs: 0.44, addedP50: 4.2 } } as const;

interface LoadReport {
  accepted: number;
  failed: number;
  failures: string[];
  greetings: Record<string, number>;
  elapsedMs: number;
  latencies: number[];
}

interface Figures { rate: number; p50: number; p99: number; cpuMs: number | null }
interface Run extends Figures { way: Way; repetition: number; elapsedMs: number; connections: number }
type ProxyWay = Exclude<Way, 'direct'>;

const lab = new NetnsLab();
let dataDir: string | undefined;
/** The Ichidan processes by way (their pids, for /proc/<pid>/stat). */
const ichidan = new Map<ProxyWay, number>();
/** Clock ticks per second, the unit of /proc/<pid>/stat's times (getconf CLK_TCK; 100 on Linux). */
const CLOCK_TICKS = 100;

async function cleanUp(): Promise<void> {
  await lab.cleanup();
  if (dataDir) await rm(dataDir, { recursive: true, force: true });
}

function percentile(sorted: number[], q: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * q))];
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)];
}

/** Waits until something in `ns` listens on TCP `port` (smtp-sink says nothing when it is ready). */
async function listening(ns: string, port: number): Promise<void> {
  for (let i = 0; i < 100; i++) {
    if (lab.exec(ns, 'ss', ['-Hltn', `sport = :${port}`]).trim() !== '') return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`nothing listens on port ${port} in ${ns}`);
}

/** User + system CPU of a process and all its threads so far, in ms. */
function cpuMs(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  // The command name (field 2) may hold spaces: fields are counted after its closing parenthesis.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return ((Number(fields[11]) + Number(fields[12])) * 1000) / CLOCK_TICKS;
}

/** Starts Ichidan in `ns`; resolves with its log file once its proxy listener is bound. */
async function startIchidan(ns: string, base: string, way: ProxyWay): Promise<string> {
  const dir = join(base, way);
  await mkdir(dir, { recursive: true });
  const config = {
    hostname: 'proxy.bench.test',
    dataDir: dir,
    listeners: [{ name: 'proxy', role: 'proxy', address: '0.0.0.0', port: PROXY_PORT[way], tls: 'none' }],
    trustedNetworks: ['192.0.2.0/24'],
    delivery: { mtaSts: { enabled: false }, transcripts: { enabled: way === 'proxy' } },
  };
  const file = join(dir, 'config.yaml');
  // JSON is YAML.
  await writeFile(file, JSON.stringify(config, null, 2));
  const logFile = join(dir, 'ichidan.log');
  const log = openSync(logFile, 'w');
  const profile = process.env.BENCH_PROXY_PROFILE ? ['--cpu-prof', `--cpu-prof-dir=${join(process.env.BENCH_PROXY_PROFILE, way)}`] : [];
  const child = lab.spawn(ns, process.execPath, [...profile, CLI, 'start', '-c', file], {
    stdio: ['ignore', log, log, 'pipe'],
    env: { ...process.env, ICHIDAN_READY_FD: '3' },
  });
  closeSync(log);
  // `ip netns exec` executes the command in its own process: the child's pid is Ichidan's.
  ichidan.set(way, child.pid!);
  const ready = await new Promise<{ listeners: Array<{ name: string }> }>((resolve, reject) => {
    createInterface({ input: child.stdio[3] as NodeJS.ReadableStream }).once('line', (line) => resolve(JSON.parse(line)));
    child.once('exit', (code) => reject(new Error(`Ichidan exited (${code}) before it was ready; its log ends:\n${readFileSync(logFile, 'utf8').slice(-2000)}`)));
  });
  if (!ready.listeners.some((l) => l.name === 'proxy')) {
    throw new Error(`Ichidan started without its proxy listener; its log ends:\n${readFileSync(logFile, 'utf8').slice(-2000)}`);
  }
  return logFile;
}

/** Ichidan's warnings and errors, one line per distinct message with its count. */
function logProblems(logFile: string): string[] {
  const counts = new Map<string, number>();
  for (const line of readFileSync(logFile, 'utf8').split('\n')) {
    let record: { level?: number; msg?: string };
    try {
      record = JSON.parse(line) as typeof record;
    } catch {
      continue; // not a log record (blank, or cut off)
    }
    if ((record.level ?? 0) >= 40) counts.set(record.msg ?? '?', (counts.get(record.msg ?? '?') ?? 0) + 1);
  }
  return [...counts].map(([msg, n]) => `${n} × ${msg}`);
}

/** The REDIRECT that sends the client's port-25 traffic to the proxy of `way`; null removes it (it is the only NAT rule there). */
function redirect(server: string, way: ProxyWay | null): void {
  if (way) lab.redirect(server, { family: 4, destination: DESTINATION, port: 25, inInterface: SERVER_VETH }, PROXY_PORT[way]);
  else lab.iptables(server, 4, ['-t', 'nat', '-F', 'PREROUTING']);
}

async function load(client: string, way: Way, messages: number, reuse: boolean): Promise<LoadReport> {
  const args = [LOAD, DESTINATION, '25', String(messages), String(SESSIONS), String(MESSAGE_SIZE), reuse ? '1' : '0', PIPELINING ? '1' : '0', String(RCPTS)];
  const run = await lab.run(client, process.execPath, args, RUN_TIMEOUT_MS);
  if (run.code !== 0) throw new Error(`the load generator failed (${run.code ?? 'timed out'}): ${run.stderr.trim()}`);
  const report = JSON.parse(run.stdout) as LoadReport;
  if (report.accepted !== messages) {
    throw new Error(`${way}: ${report.accepted} of ${messages} messages accepted; ${report.failed} failed, e.g. ${report.failures.join(' | ')}`);
  }
  const strangers = Object.keys(report.greetings).filter((g) => !GREETING[way].test(g));
  if (strangers.length > 0) throw new Error(`${way}: connections greeted by the wrong side: ${strangers.join(' | ')}`);
  return report;
}

async function measure(client: string, server: string, workload: Workload, way: Way, repetition: number): Promise<Run> {
  const pid = way === 'direct' ? null : ichidan.get(way)!;
  if (way !== 'direct') redirect(server, way);
  try {
    const cpuBefore = pid === null ? 0 : cpuMs(pid);
    const report = await load(client, way, MESSAGES, workload.reuse);
    const cpu = pid === null ? null : (cpuMs(pid) - cpuBefore) / MESSAGES;
    const sorted = [...report.latencies].sort((a, b) => a - b);
    const connections = Object.values(report.greetings).reduce((a, b) => a + b, 0);
    return { way, repetition, elapsedMs: report.elapsedMs, connections, rate: MESSAGES / (report.elapsedMs / 1000), p50: percentile(sorted, 0.5), p99: percentile(sorted, 0.99), cpuMs: cpu };
  } finally {
    if (way !== 'direct') redirect(server, null);
  }
}

function summary(runs: Run[], way: Way): Figures {
  const mine = runs.filter((r) => r.way === way);
  return { rate: median(mine.map((r) => r.rate)), p50: median(mine.map((r) => r.p50)), p99: median(mine.map((r) => r.p99)), cpuMs: way === 'direct' ? null : median(mine.map((r) => r.cpuMs!)) };
}

const ms = (v: number) => `${v.toFixed(1)} ms`;

async function main(): Promise<void> {
  const support = canUseNetns();
  if (!support.ok) throw new Error(`the proxy benchmark needs network namespaces: ${support.reason}`);
  dataDir = await mkdtemp(join(ROOT, 'var', 'bench-proxy-'));
  const server = lab.namespace('proxy');
  const client = lab.namespace('legacy');
  lab.veth({ ns: server, name: SERVER_VETH, addresses: [`${SERVER_ADDRESS}/24`] }, { ns: client, name: 'to-proxy', addresses: [`${CLIENT_ADDRESS}/24`] });
  lab.route(client, 'default', SERVER_ADDRESS);
  lab.address(server, 'lo', `${DESTINATION}/32`);
  lab.spawn(server, 'smtp-sink', ['-u', 'root', `${DESTINATION}:25`, '1024'], { stdio: 'ignore' });
  await listening(server, 25);
  const logFiles = [await startIchidan(server, dataDir, 'proxy'), await startIchidan(server, dataDir, 'proxy_nt')];

  console.log(`${MESSAGES} messages of ${MESSAGE_SIZE} bytes, ${SESSIONS} sessions, ${PIPELINING ? 'pipelined' : 'lockstep (not pipelined: each command after the previous reply)'}, to ${DESTINATION}:25; median of ${REPETITIONS} runs each way`);
  for (const way of ['proxy', 'proxy_nt'] as const) {
    redirect(server, way);
    await load(client, way, WARM_UP_MESSAGES, true);
    redirect(server, null);
  }

  const results = [];
  for (const workload of WORKLOADS) {
    const runs: Run[] = [];
    for (let repetition = 1; repetition <= REPETITIONS; repetition++) {
      // Each way goes first once: whatever the machine does meanwhile falls on all of them alike.
      const order = WAYS.map((_, i) => WAYS[(i + repetition - 1) % WAYS.length]);
      for (const way of order) runs.push(await measure(client, server, workload, way, repetition));
    }
    const proxy = summary(runs, 'proxy');
    const bare = summary(runs, 'proxy_nt');
    const direct = summary(runs, 'direct');
    const result = {
      workload: workload.name, reuse: workload.reuse, runs, proxy, proxyNoTranscripts: bare, direct,
      ratio: proxy.rate / direct.rate, addedP50: proxy.p50 - direct.p50, addedP99: proxy.p99 - direct.p99,
      ratioNoTranscripts: bare.rate / direct.rate, addedP50NoTranscripts: bare.p50 - direct.p50, addedP99NoTranscripts: bare.p99 - direct.p99,
    };
    results.push(result);
    const row = (name: string, f: Figures) => console.log(`  ${name.padEnd(26)} ${f.rate.toFixed(0).padStart(6)} msg/s   p50 ${ms(f.p50).padStart(9)}   p99 ${ms(f.p99).padStart(9)}${f.cpuMs === null ? '' : `   CPU ${ms(f.cpuMs).padStart(8)}/msg`}`);
    console.log(`\n${workload.name}:`);
    row('proxy, transcripts on', proxy);
    row('proxy, transcripts off', bare);
    row('straight', direct);
    console.log(`  proxy ÷ straight   ${result.ratio.toFixed(2)}× (${result.ratioNoTranscripts.toFixed(2)}× without transcripts); added per transaction: p50 ${ms(result.addedP50)}, p99 ${ms(result.addedP99)} (without transcripts ${ms(result.addedP50NoTranscripts)}, ${ms(result.addedP99NoTranscripts)})`);
    const warp = WARP[`${workload.reuse}`];
    console.log(`  Warp 64 KB buffer (issue 18's figures, not run here): ${warp.rate} msg/s, CPU ${ms(warp.cpuMs)}/msg, added p50 +${ms(warp.addedP50)}; proxy ÷ Warp ${(proxy.rate / warp.rate).toFixed(2)}×`);
    const rates = (way: Way) => runs.filter((r) => r.way === way).map((r) => r.rate.toFixed(0)).join(', ');
    console.log(`  runs (msg/s): proxy ${rates('proxy')}; without transcripts ${rates('proxy_nt')}; straight ${rates('direct')}`);
  }
  const problems = logFiles.flatMap(logProblems);
  if (problems.length > 0) console.log(`\nIchidan logged: ${problems.join('; ')}`);

  const when = new Date().toISOString();
  const dir = join(ROOT, 'bench', 'results');
  await mkdir(dir, { recursive: true });
  const file = join(dir, `proxy-${MODE.file}${when.slice(0, 10)}.json`);
  await writeFile(file, JSON.stringify({
    when, node: process.version, cpus: (await readFile('/proc/cpuinfo', 'utf8')).match(/^processor/gm)?.length,
    settings: { messages: MESSAGES, sessions: SESSIONS, messageSize: MESSAGE_SIZE, repetitions: REPETITIONS, warmUpMessages: WARM_UP_MESSAGES, pipelining: PIPELINING, recipients: RCPTS },
    workloads: results, ichidanLog: problems,
  }, null, 2) + '\n');
  console.log(`\nresults written to ${file.slice(ROOT.length + 1)}`);
  const named: Record<string, number | null> = {};
  for (const r of results) {
    const suffix = r.reuse ? '_reused' : '';
    Object.assign(named, {
      [`proxy_msgs${suffix}`]: r.proxy.rate, [`straight_msgs${suffix}`]: r.direct.rate, [`proxy_cpu_ms${suffix}`]: r.proxy.cpuMs,
      [`added_p50_ms${suffix}`]: r.addedP50, [`added_p99_ms${suffix}`]: r.addedP99,
      [`proxy_msgs_no_transcripts${suffix}`]: r.proxyNoTranscripts.rate, [`proxy_cpu_ms_no_transcripts${suffix}`]: r.proxyNoTranscripts.cpuMs,
      [`added_p50_ms_no_transcripts${suffix}`]: r.addedP50NoTranscripts,
    });
  }
  printResult(results, Object.fromEntries(Object.entries(named).map(([name, value]) => [`${name}${MODE.name}`, value])));
}

for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.once(signal, () => {
    cleanUp().finally(() => process.exit(130));
  });
}

main().then(async () => {
  await cleanUp();
  process.exit(0);
}, async (err: Error) => {
  console.error(err.stack ?? err.message);
  await cleanUp().catch((e: Error) => console.error(`cleanup: ${e.message}`));
  process.exit(1);
});
