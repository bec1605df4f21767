/*
 * The relay benchmark: smtp-source → Ichidan → smtp-sink, durable (fsync before every 250).
 *
 * For each workload (2 KB and 64 KB messages; one message per connection, and connections reused)
 * it prints messages/s end to end (first connection to last delivery), p50/p99 latency from the
 * end of DATA to delivery (from Ichidan's own delivery records), and the bytes the disk device
 * wrote per message divided by the message size (/proc/diskstats around a `sync`, so filesystem
 * journal writes count too). The same load straight into smtp-sink runs first as the ceiling of
 * the tools themselves, and every figure is also given as a ratio to it. Results go to stdout and
 * to bench/results/relay-<date>.json.
 *
 * Everything binds to loopback; no DNS is configured, so no lookup can leave the machine.
 * Last line: `RESULT {json}` (bench-result.ts): msgs, postfix_msgs, disk_kb_per_msg_2k,
 *   postfix_disk_kb_per_msg_2k, disk_ratio_64k … per workload, then every figure by its path.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { createReadStream, existsSync, statSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { freePort, run, waitForPort } from './bench-util.js';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { printResult } from './bench-result.js';

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

/** The block device holding `path`, as named in /proc/diskstats. */
function deviceOf(path: string): string {
  const dev = statSync(path).dev;
  const major = dev >> 8, minor = dev & 0xff;
  const line = execFileSync('cat', ['/proc/diskstats'], { encoding: 'utf8' }).split('\n')
    .map((l) => l.trim().split(/\s+/)).find((f) => Number(f[0]) === major && Number(f[1]) === minor);
  if (!line) throw new Error(`no /proc/diskstats entry for ${major}:${minor}`);
  return line[2];
}

function sectorsWritten(device: string): number {
  execFileSync('sync');
  const f = execFileSync('cat', ['/proc/diskstats'], { encoding: 'utf8' }).split('\n').map((l) => l.trim().split(/\s+/)).find((x) => x[2] === device)!;
  return Number(f[9]);
}

function startSink(port: number): ChildProcess {
  // -c would print counters; plain is fastest. Backlog 1024.
  return spawn('smtp-sink', ['-u', 'root', `127.0.0.2:${port}`, '1024'], { stdio: 'ignore' });
}

function smtpSourceArgs(w: Workload, target: string): string[] {
  return [...(w.reuse ? ['-d'] : []), '-s', String(SESSIONS), '-m', String(w.count), '-l', String(w.size),
    '-f', 'bench@source.test', '-t', 'sink@far.test', '-M', 'source.test', target];
}

interface Figures { seconds: number; rate: number; p50?: number; p99?: number; diskBytesPerMessage?: number; writeRatio?: number }

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
async function measure(w: Workload, dir: string, port: number, delivered: () => Promise<Deliveries>): Promise<Figures> {
  await waitForPort('127.0.0.1', port);
  const device = deviceOf(dir);
  const before = sectorsWritten(device);
  const t0 = Date.now();
  await run('smtp-source', smtpSourceArgs(w, `127.0.0.1:${port}`));
  let seen: Deliveries;
  for (;;) {
    seen = await delivered();
    if (seen.latencies.length >= w.count) break;
    await new Promise((r) => setTimeout(r, 200));
  }
  // Let the MTA finish its cleanup (removing delivered files and records) before reading the disk counter.
  await new Promise((r) => setTimeout(r, 1000));
  const after = sectorsWritten(device);
  const latencies = [...seen.latencies].sort((a, b) => a - b);
  const seconds = (seen.last - t0) / 1000;
  const diskBytesPerMessage = ((after - before) * 512) / w.count;
  return {
    seconds, rate: w.count / seconds,
    p50: Math.round(latencies[Math.floor(latencies.length * 0.5)]), p99: Math.round(latencies[Math.floor(latencies.length * 0.99)]),
    diskBytesPerMessage, writeRatio: diskBytesPerMessage / w.size,
  };
}

async function ichidan(w: Workload, sinkPort: number): Promise<Figures> {
  const dir = await mkdtemp(join(ROOT, 'var', 'bench-'));
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
    '',
  ].join('\n'));
  const logFile = join(dir, 'ichidan.log');
  const { openSync } = await import('node:fs');
  const out = openSync(logFile, 'w');
  const proc = spawn(process.execPath, [CLI, 'start', '-c', config], { stdio: ['ignore', out, 'inherit'] });
  try {
    return await measure(w, dir, port, async () => {
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
    proc.kill('SIGTERM');
    await new Promise((r) => proc.on('exit', r));
    await rm(dir, { recursive: true, force: true });
  }
}

/** A private Postfix instance (its own config and queue under var/) relaying to the same sink. */
async function postfix(w: Workload, sinkPort: number): Promise<Figures> {
  const dir = await mkdtemp(join(ROOT, 'var', 'bench-postfix-'));
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
  try {
    // Postfix logs whole seconds: the moment the last delivery is seen stands for its time.
    return await measure(w, dir, port, async () => {
      const text = existsSync(maillog) ? await readFile(maillog, 'utf8') : '';
      const latencies = [...text.matchAll(/ delay=([\d.]+),.* status=sent /g)].map((m) => Number(m[1]) * 1000);
      return { latencies, last: Date.now() };
    });
  } finally {
    process.kill(masterPid, 'SIGTERM');
    for (let i = 0; i < 50 && existsSync(`/proc/${masterPid}`); i++) await new Promise((r) => setTimeout(r, 100));
    await rm(dir, { recursive: true, force: true });
  }
}

async function main(): Promise<void> {
  for (const tool of ['smtp-source', 'smtp-sink']) {
    try { execFileSync('which', [tool]); } catch { throw new Error(`${tool} not found: install Debian's postfix package`); }
  }
  if (!existsSync(CLI)) throw new Error('build first: npm run build');
  await mkdir(join(ROOT, 'var'), { recursive: true });
  const sinkPort = await freePort('127.0.0.2');
  const sink = startSink(sinkPort);
  await waitForPort('127.0.0.2', sinkPort);
  const results: Array<{ workload: string; ichidan: Figures; postfix: Figures | null } & Record<string, unknown>> = [];
  try {
    for (const w of WORKLOADS) {
      const base = await baseline(w, sinkPort);
      const ich = await ichidan(w, sinkPort);
      const pfx = WITH_POSTFIX ? await postfix(w, sinkPort) : null;
      const row = { workload: w.name, messages: w.count, sessions: SESSIONS, size: w.size, baseline: base, ichidan: ich, postfix: pfx,
        ratioToBaseline: ich.rate / base.rate, ratioToPostfix: pfx ? ich.rate / pfx.rate : null };
      results.push(row);
      const fmt = (name: string, f: Figures) => `${name.padEnd(8)} ${f.rate.toFixed(0).padStart(6)} msg/s  p50 ${String(f.p50).padStart(4)} ms  p99 ${String(f.p99).padStart(4)} ms  disk ${(f.diskBytesPerMessage! / 1024).toFixed(1).padStart(5)} KB/msg = ${f.writeRatio!.toFixed(2)}x size`;
      console.log(`${w.name} (${w.count} messages, ${SESSIONS} sessions)`);
      console.log(`  ${fmt('ichidan', ich)}`);
      if (pfx) console.log(`  ${fmt('postfix', pfx)}\n  ichidan / postfix = ${(ich.rate / pfx.rate).toFixed(2)}x rate, ${(ich.writeRatio! / pfx.writeRatio!).toFixed(2)}x disk`);
      console.log(`  smtp-source → smtp-sink directly: ${base.rate.toFixed(0)} msg/s (the tools' ceiling)`);
    }
  } finally {
    sink.kill('SIGTERM');
  }
  const when = new Date().toISOString();
  const file = join(ROOT, 'bench', 'results', `relay-${when.slice(0, 10)}.json`);
  await mkdir(join(ROOT, 'bench', 'results'), { recursive: true });
  await writeFile(file, JSON.stringify({ when, node: process.version, cpus: (await readFile('/proc/cpuinfo', 'utf8')).match(/^processor/gm)?.length, results }, null, 2) + '\n');
  console.log(`results written to ${file}`);
  const row = (size: string, reuse: boolean) => results.find((r) => r.workload.startsWith(size) && r.workload.includes('reused') === reuse);
  const kb = (f: Figures | null | undefined) => (f?.diskBytesPerMessage === undefined ? undefined : f.diskBytesPerMessage / 1024);
  const named: Record<string, number | undefined> = {};
  for (const [size, reuse, suffix] of [['2KB', false, '2k'], ['2KB', true, '2k_reused'], ['64KB', false, '64k'], ['64KB', true, '64k_reused']] as const) {
    const r = row(size, reuse);
    Object.assign(named, {
      [`msgs_${suffix}`]: r?.ichidan.rate, [`postfix_msgs_${suffix}`]: r?.postfix?.rate,
      [`disk_kb_per_msg_${suffix}`]: kb(r?.ichidan), [`postfix_disk_kb_per_msg_${suffix}`]: kb(r?.postfix),
      [`disk_ratio_${suffix}`]: r?.ichidan.writeRatio, [`postfix_disk_ratio_${suffix}`]: r?.postfix?.writeRatio,
    });
  }
  printResult(results, { msgs: named.msgs_2k, postfix_msgs: named.postfix_msgs_2k, ...named });
}

await main();
