/*
 * The relay benchmark: smtp-source → Ichidan → smtp-sink, durable (fsync before every 250).
 *
 * For each workload (2 KB and 64 KB messages; one message per connection, and connections reused)
 * it prints messages/s end to end (first connection to last delivery), p50/p99 latency from the
 * end of DATA to delivery (from Ichidan's own delivery records), and the bytes the disk device
 * wrote per message divided by the message size (/proc/diskstats around a `sync`). Each MTA run has
 * its queue on a fresh ext4 with a journal on a loop device (bench-loopfs.ts; BENCH_FS=host: var/ on
 * the host's file system instead), so the journal's writes count, and its share is given apart as
 * "log KB/msg" (/proc/fs/jbd2). The same load straight into smtp-sink runs first as the ceiling of
 * the tools themselves, and every figure is also given as a ratio to it. Results go to stdout and
 * to bench/results/relay-<date>.json.
 *
 * BENCH_TRANSCRIPTS=0 turns Ichidan's outbound session transcripts off (to see their share).
 * Everything binds to loopback; no DNS is configured, so no lookup can leave the machine.
 * Last line: `RESULT {json}` (bench-result.ts): msgs, postfix_msgs, disk_kb_per_msg_2k,
 *   postfix_disk_kb_per_msg_2k, disk_ratio_64k, log_kb_per_msg_2k … per workload, fs_loop (1 on the
 *   loop file system, 0 on the host's), then every figure by its path.
 */
import { execFileSync, spawn } from 'node:child_process';
import { closeSync, createReadStream, existsSync, openSync, statfsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { cleanUp, cleanUpOnSignals, onCleanup, sleep } from './bench-cleanup.js';
import { benchFsLabel, journalWritten, mountBenchFs, type BenchFs } from './bench-loopfs.js';
import { stopPostfixMaster } from './bench-postfix.js';
import { deviceBytesWritten } from './bench-proc.js';
import { printResult } from './bench-result.js';
import { freePort, run, waitForPort } from './bench-util.js';

const ROOT = join(import.meta.dirname, '..', '..');
const CLI = process.env.ICHIDAN_CLI ?? join(ROOT, 'dist', 'mta', 'mta-main.js');
const SESSIONS = Number(process.env.BENCH_SESSIONS ?? 20);

interface Workload { name: string; size: number; count: number; reuse: boolean }

const ALL_WORKLOADS: Workload[] = [
  { name: '2KB, one message per connection', size: 2048, count: Number(process.env.BENCH_COUNT_2K ?? 20000), reuse: false },
  { name: '2KB, connections reused', size: 2048, count: Number(process.env.BENCH_COUNT_2K ?? 20000), reuse: true },
  { name: '64KB, one message per connection', size: 65536, count: Number(process.env.BENCH_COUNT_64K ?? 4000), reuse: false },
  { name: '64KB, connections reused', size: 65536, count: Number(process.env.BENCH_COUNT_64K ?? 4000), reuse: true },
];
/** BENCH_ONLY=2,4 runs only those workloads (1-based), for quick experiments. */
const WORKLOADS = process.env.BENCH_ONLY
  ? process.env.BENCH_ONLY.split(',').map((n) => ALL_WORKLOADS[Number(n) - 1])
  : ALL_WORKLOADS;
/** BENCH_POSTFIX=0 skips the Postfix relay runs (they need root and Debian's postfix package). */
const WITH_POSTFIX = process.env.BENCH_POSTFIX !== '0';
const EXTRA_QUEUE = process.env.BENCH_QUEUE ? `, ${process.env.BENCH_QUEUE}` : '';

function startSink(port: number): void {
  // -c would print counters; plain is fastest. Backlog 1024.
  const sink = spawn('smtp-sink', ['-u', 'root', `127.0.0.2:${port}`, '1024'], { stdio: 'ignore' });
  onCleanup(async () => { sink.kill('SIGTERM'); });
}

/** Runs `body` with a folder of its own on a freshly set-up file system, then removes both. */
async function onBenchFs<T>(prefix: string, body: (dir: string, fs: BenchFs) => Promise<T>): Promise<T> {
  const fs = await mountBenchFs();
  try {
    const dir = await mkdtemp(join(fs.dir, prefix));
    const removeDir = onCleanup(() => rm(dir, { recursive: true, force: true }));
    try {
      return await body(dir, fs);
    } finally {
      await removeDir();
    }
  } finally {
    await fs.cleanUp();
  }
}

function smtpSourceArgs(w: Workload, target: string): string[] {
  return [...(w.reuse ? ['-d'] : []), '-s', String(SESSIONS), '-m', String(w.count), '-l', String(w.size),
    '-f', 'bench@source.test', '-t', 'sink@far.test', '-M', 'source.test', target];
}

interface Figures {
  seconds: number; rate: number; p50?: number; p99?: number; diskBytesPerMessage?: number; writeRatio?: number;
  /** The filesystem journal's share of the disk bytes (a lower bound, see journalWritten) and its commits. */
  logBytesPerMessage?: number; logCommitsPerMessage?: number;
}

async function baseline(w: Workload, sinkPort: number): Promise<Figures> {
  const t0 = process.hrtime.bigint();
  await run('smtp-source', smtpSourceArgs(w, `127.0.0.2:${sinkPort}`));
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  return { seconds, rate: w.count / seconds };
}

interface Deliveries { latencies: number[]; last: number }

/**
 * Runs the load against an MTA listening on `port`, polls `delivered()` until every message is
 * delivered, and turns what it saw into figures (disk counter read around the whole run).
 */
async function measure(w: Workload, fs: BenchFs, port: number, delivered: () => Promise<Deliveries>): Promise<Figures> {
  await waitForPort('127.0.0.1', port);
  const before = deviceBytesWritten(fs.device);
  const logBefore = journalWritten(fs.device);
  const t0 = Date.now();
  await run('smtp-source', smtpSourceArgs(w, `127.0.0.1:${port}`));
  let seen: Deliveries;
  for (;;) {
    seen = await delivered();
    if (seen.latencies.length >= w.count) break;
    await new Promise((r) => setTimeout(r, 200));
  }
  // Let the MTA finish its cleanup (removing delivered files and records) before reading the disk counter.
  await sleep(1000);
  const after = deviceBytesWritten(fs.device);
  const logAfter = journalWritten(fs.device);
  const latencies = [...seen.latencies].sort((a, b) => a - b);
  const seconds = (seen.last - t0) / 1000;
  const diskBytesPerMessage = (after - before) / w.count;
  const log = logBefore && logAfter ? {
    logBytesPerMessage: ((logAfter.blocksLogged - logBefore.blocksLogged) * statfsSync(fs.dir).bsize) / w.count,
    logCommitsPerMessage: (logAfter.transactions - logBefore.transactions) / w.count,
  } : {};
  return {
    seconds, rate: w.count / seconds,
    p50: Math.round(latencies[Math.floor(latencies.length * 0.5)]), p99: Math.round(latencies[Math.floor(latencies.length * 0.99)]),
    diskBytesPerMessage, writeRatio: diskBytesPerMessage / w.size, ...log,
  };
}

/** Starts `cmd` with its output to a file, and registers a stop for it: SIGTERM, then waiting for its exit. */
function startStoppable(cmd: string, args: string[], stdoutFile: string): () => Promise<void> {
  const out = openSync(stdoutFile, 'w');
  const proc = spawn(cmd, args, { stdio: ['ignore', out, 'inherit'] });
  // The child has its own copy; ours would keep the file system busy past the run.
  closeSync(out);
  const exited = new Promise<void>((r) => proc.once('exit', () => r()));
  return onCleanup(async () => {
    if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGTERM');
    await exited;
  });
}

async function ichidan(w: Workload, sinkPort: number): Promise<Figures> {
  return onBenchFs('bench-', (dir, fs) => ichidanIn(dir, fs, w, sinkPort));
}

async function ichidanIn(dir: string, fs: BenchFs, w: Workload, sinkPort: number): Promise<Figures> {
  const port = await freePort('127.0.0.1');
  const config = join(dir, 'config.yaml');
  await writeFile(config, [
    `dataDir: ${dir}`,
    'hostname: bench.ichidan.test',
    'log: { level: info }',
    `listeners: [{ name: mx, role: mx, port: ${port}, greetingDelay: 0 }]`,
    'trustedNetworks: [127.0.0.1/32]',
    'limits: { maxRecipients: 1000, maxMessageSize: 50MB }',
    `queue: { fsync: ${process.env.BENCH_FSYNC ?? 'true'}, concurrency: 100, laneConcurrency: 100${EXTRA_QUEUE} }`,
    `routes: { "*": { host: 127.0.0.2, port: ${sinkPort} } }`,
    ...(process.env.BENCH_TRANSCRIPTS === '0' ? ['delivery: { transcripts: { enabled: false } }'] : []),
    '',
  ].join('\n'));
  const logFile = join(dir, 'ichidan.log');
  const stop = startStoppable(process.execPath, [CLI, 'start', '-c', config], logFile);
  try {
    return await measure(w, fs, port, async () => {
      const seen: Deliveries = { latencies: [], last: 0 };
      for await (const line of createInterface({ input: createReadStream(logFile) })) {
        if (!line.includes('"verdict":"delivered"')) continue;
        const rec = JSON.parse(line) as { time: string; delay: number };
        seen.latencies.push(rec.delay);
        seen.last = Math.max(seen.last, Date.parse(rec.time));
      }
      return seen;
    });
  } finally {
    await stop();
  }
}

/** A private Postfix instance (its own config and queue under var/) relaying to the same sink. */
async function postfix(w: Workload, sinkPort: number): Promise<Figures> {
  return onBenchFs('bench-postfix-', (dir, fs) => postfixIn(dir, fs, w, sinkPort));
}

async function postfixIn(dir: string, fs: BenchFs, w: Workload, sinkPort: number): Promise<Figures> {
  execFileSync('chmod', ['755', dir]); // Postfix's daemons run as its own user
  const port = await freePort('127.0.0.1');
  const etc = join(dir, 'etc'), queue = join(dir, 'queue'), data = join(dir, 'data'), maillog = join(dir, 'maillog');
  await mkdir(etc, { recursive: true });
  await mkdir(data, { recursive: true });
  await writeFile(join(etc, 'main.cf'), [
    'compatibility_level = 3.6',
    `queue_directory = ${queue}`,
    `data_directory = ${data}`,
    'mail_owner = postfix',
    'myhostname = postfix.bench.test',
    'mydestination =',
    'inet_interfaces = 127.0.0.1',
    'inet_protocols = ipv4',
    'mynetworks = 127.0.0.0/8',
    'smtpd_relay_restrictions = permit_mynetworks, reject',
    `relayhost = [127.0.0.2]:${sinkPort}`,
    'smtp_dns_support_level = disabled',
    'alias_maps =',
    'alias_database =',
    'local_recipient_maps =',
    `maillog_file = ${maillog}`,
    `maillog_file_prefixes = ${dir}`,
    'default_process_limit = 100',
    '',
  ].join('\n'));
  const master = (await readFile('/etc/postfix/master.cf', 'utf8')).split('\n').map((line) => {
    if (/^smtp\s+inet\s/.test(line)) return `127.0.0.1:${port} inet n - n - - smtpd`;
    // no chroot: the private queue is not set up as a chroot jail
    return line.replace(/^(\S+\s+(?:unix|inet|fifo|pass|unix-dgram)\s+\S+\s+\S+\s+)y(\s)/, '$1n$2');
  }).join('\n');
  await writeFile(join(etc, 'master.cf'), master);
  const owned = ['active', 'bounce', 'corrupt', 'defer', 'deferred', 'flush', 'hold', 'incoming', 'private', 'saved', 'trace'];
  for (const d of [...owned, 'maildrop', 'public', 'pid']) await mkdir(join(queue, d), { recursive: true });
  execFileSync('chown', ['postfix:root', ...owned.map((d) => join(queue, d)), data]);
  execFileSync('chmod', ['700', ...owned.map((d) => join(queue, d))]);
  execFileSync('chown', ['postfix:postdrop', join(queue, 'maildrop'), join(queue, 'public')]);
  execFileSync('chmod', ['730', join(queue, 'maildrop')]);
  execFileSync('chmod', ['710', join(queue, 'public')]);
  execFileSync('/usr/lib/postfix/sbin/master', ['-c', etc, '-w']);
  const masterPid = Number((await readFile(join(queue, 'pid', 'master.pid'), 'utf8')).trim());
  // Every daemon of the tree must be gone before its queue's file system can be unmounted.
  const stop = onCleanup(() => stopPostfixMaster(masterPid, etc));
  try {
    // Postfix logs whole seconds: the moment the last delivery is seen stands for its time.
    return await measure(w, fs, port, async () => {
      const text = existsSync(maillog) ? await readFile(maillog, 'utf8') : '';
      const latencies = [...text.matchAll(/ delay=([\d.]+),.* status=sent /g)].map((m) => Number(m[1]) * 1000);
      return { latencies, last: Date.now() };
    });
  } finally {
    await stop();
  }
}

async function main(): Promise<void> {
  for (const tool of ['smtp-source', 'smtp-sink']) {
    try { execFileSync('which', [tool]); } catch { throw new Error(`${tool} not found: install Debian's postfix package`); }
  }
  if (!existsSync(CLI)) throw new Error('build first: npm run build');
  await mkdir(join(ROOT, 'var'), { recursive: true });
  const fsLabel = benchFsLabel();
  console.log(`file system: ${fsLabel}`);
  const sinkPort = await freePort('127.0.0.2');
  startSink(sinkPort);
  await waitForPort('127.0.0.2', sinkPort);
  const results: Array<{ workload: string; ichidan: Figures; postfix: Figures | null } & Record<string, unknown>> = [];
  for (const w of WORKLOADS) {
    const base = await baseline(w, sinkPort);
    const ich = await ichidan(w, sinkPort);
    const pfx = WITH_POSTFIX ? await postfix(w, sinkPort) : null;
    const row = { workload: w.name, messages: w.count, sessions: SESSIONS, size: w.size, baseline: base, ichidan: ich, postfix: pfx,
      ratioToBaseline: ich.rate / base.rate, ratioToPostfix: pfx ? ich.rate / pfx.rate : null };
    results.push(row);
    const log = (f: Figures) => (f.logBytesPerMessage === undefined ? '' : `  log ${(f.logBytesPerMessage / 1024).toFixed(1).padStart(5)} KB/msg (${f.logCommitsPerMessage!.toFixed(2)} commits/msg)`);
    const fmt = (name: string, f: Figures) => `${name.padEnd(8)} ${f.rate.toFixed(0).padStart(6)} msg/s  p50 ${String(f.p50).padStart(4)} ms  p99 ${String(f.p99).padStart(4)} ms  disk ${(f.diskBytesPerMessage! / 1024).toFixed(1).padStart(5)} KB/msg = ${f.writeRatio!.toFixed(2)}x size${log(f)}`;
    console.log(`${w.name} (${w.count} messages, ${SESSIONS} sessions)`);
    console.log(`  ${fmt('ichidan', ich)}`);
    if (pfx) console.log(`  ${fmt('postfix', pfx)}\n  ichidan / postfix = ${(ich.rate / pfx.rate).toFixed(2)}x rate, ${(ich.writeRatio! / pfx.writeRatio!).toFixed(2)}x disk`);
    console.log(`  smtp-source → smtp-sink directly: ${base.rate.toFixed(0)} msg/s (the tools' ceiling)`);
  }
  const when = new Date().toISOString();
  const onLoop = fsLabel.startsWith('loop');
  const file = join(ROOT, 'bench', 'results', `relay-${when.slice(0, 10)}-${onLoop ? 'loop-ext4' : 'host'}.json`);
  await mkdir(join(ROOT, 'bench', 'results'), { recursive: true });
  await writeFile(file, JSON.stringify({ when, node: process.version, cpus: (await readFile('/proc/cpuinfo', 'utf8')).match(/^processor/gm)?.length, fileSystem: fsLabel, results }, null, 2) + '\n');
  console.log(`results written to ${file}`);
  const row = (size: string, reuse: boolean) => results.find((r) => r.workload.startsWith(size) && r.workload.includes('reused') === reuse);
  const kb = (bytes: number | undefined) => (bytes === undefined ? undefined : bytes / 1024);
  const named: Record<string, number | undefined> = {};
  for (const [size, reuse, suffix] of [['2KB', false, '2k'], ['2KB', true, '2k_reused'], ['64KB', false, '64k'], ['64KB', true, '64k_reused']] as const) {
    const r = row(size, reuse);
    Object.assign(named, {
      [`msgs_${suffix}`]: r?.ichidan.rate, [`postfix_msgs_${suffix}`]: r?.postfix?.rate,
      [`disk_kb_per_msg_${suffix}`]: kb(r?.ichidan.diskBytesPerMessage), [`postfix_disk_kb_per_msg_${suffix}`]: kb(r?.postfix?.diskBytesPerMessage),
      [`disk_ratio_${suffix}`]: r?.ichidan.writeRatio, [`postfix_disk_ratio_${suffix}`]: r?.postfix?.writeRatio,
      [`log_kb_per_msg_${suffix}`]: kb(r?.ichidan.logBytesPerMessage), [`postfix_log_kb_per_msg_${suffix}`]: kb(r?.postfix?.logBytesPerMessage),
    });
  }
  printResult(results, { msgs: named.msgs_2k, postfix_msgs: named.postfix_msgs_2k, ...named, fs_loop: onLoop ? 1 : 0 });
}

cleanUpOnSignals();
try {
  await main();
} finally {
  await cleanUp();
}
