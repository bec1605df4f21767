/*
 * Batch runs of the comparison benchmark: a fixed number of messages through one relay to a
 * healthy smtp-sink, and what that cost. Serves experiment 2 (resource use: three tenants' MUAs
 * sending N each) and the durable relay throughput workloads (smtp-source, as bench-relay.ts runs
 * them).
 *
 * Takes: the relay kind, the load (a function of the relay's port that resolves once it has sent
 * everything), the number of messages, a time limit, and optionally settings that differ from the
 * relay's defaults (for the diagnostic runs: Ichidan under the profiler, or without transcripts).
 * Gives: per run: delivered count, seconds from the first connection to the last delivery seen in
 * the relay's log, messages/s, p50/p99 of the relay's own latency (end of DATA to the sink's 250),
 * CPU seconds of the relay's processes (/proc, the whole process tree, reaped children included)
 * and the busiest thread's share of one core (a single-threaded bottleneck shows as ~100 %),
 * bytes the disk device wrote (/proc/diskstats around a `sync`, so the filesystem journal counts;
 * anything else writing to that disk at the time counts too) and bytes the relay's own processes
 * wrote (/proc/PID/io, blind to the journal but not to neighbours), peak summed RSS and PSS;
 * everything also per message; and, given a counter read outside the relay (e.g. the commands a
 * Redis has processed), how much it grew over the same span.
 * Network: the relay on 127.0.0.1, smtp-sink on 127.0.0.2.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { onCleanup, sleep } from './bench-cleanup.js';
import { cpuSeconds, deviceBytesWritten, deviceOf, ioWriteBytes, processTree, sampleMemory, threadCpu } from './bench-proc.js';
import type { Route } from './bench-postfix.js';
import { startRelay, type RelayKind, type RelayPlan } from './bench-relays.js';
import { percentile } from './bench-stats.js';
import { freePort, run, waitForPort } from './bench-util.js';

/** How long the relay is given after the last delivery to remove what it delivered, before the disk counter is read. */
const SETTLE_MS = 1000;

export interface BatchResult {
  relay: RelayKind;
  messages: number;
  delivered: number;
  seconds: number;
  rate: number;
  p50: number;
  p99: number;
  cpuSeconds: number;
  cpuMsPerMessage: number;
  /** The thread that used the most CPU, and the share of one core it used over the run. */
  busiestThread: { name: string; coreShare: number };
  diskBytesPerMessage: number;
  processWriteBytesPerMessage: number;
  peakRss: number;
  peakPss: number;
  /** How much `opts.counter` grew from the start of the load to the last delivery (when given). */
  counted?: number;
}

export interface SmtpSink { route: Route; stop(): Promise<void> }

/** Postfix's smtp-sink on 127.0.0.2: it absorbs ~11,000 msg/s here, far above either relay. */
export async function startSmtpSink(): Promise<SmtpSink> {
  const port = await freePort('127.0.0.2');
  const proc: ChildProcess = spawn('smtp-sink', ['-u', 'root', `127.0.0.2:${port}`, '1024'], { stdio: 'ignore' });
  const exited = new Promise<void>((r) => proc.once('exit', () => r()));
  const stop = onCleanup(async () => {
    if (proc.exitCode !== null || proc.signalCode !== null) return;
    proc.kill('SIGTERM');
    await exited;
  });
  await waitForPort('127.0.0.2', port);
  return { route: { host: '127.0.0.2', port }, stop };
}

/** A load that runs smtp-source: `count` messages of `size` bytes over `sessions` sessions, reused or not. */
export function smtpSourceLoad(count: number, size: number, sessions: number, reuse: boolean): (port: number) => Promise<void> {
  return (port) => run('smtp-source', [...(reuse ? ['-d'] : []), '-s', String(sessions), '-m', String(count), '-l', String(size),
    '-f', 'bench@source.test', '-t', 'sink@far.test', '-M', 'source.test', `127.0.0.1:${port}`]);
}

export async function runBatch(kind: RelayKind, opts: {
  routes: Record<string, Route>;
  load: (port: number) => Promise<void>;
  messages: number;
  timeoutMs: number;
  plan?: Omit<RelayPlan, 'routes'>;
  counter?: () => Promise<number>;
}): Promise<BatchResult> {
  const relay = await startRelay(kind, { ...opts.plan, routes: opts.routes });
  const memory = sampleMemory(relay.rootPid);
  try {
    const device = deviceOf(relay.dir);
    // Counted from here: the relay's start-up is not part of the batch.
    const diskBefore = deviceBytesWritten(device);
    const cpuBefore = cpuSeconds(processTree(relay.rootPid));
    const ioBefore = ioWriteBytes(processTree(relay.rootPid));
    const threadsBefore = threadCpu(processTree(relay.rootPid));
    const countedBefore = await opts.counter?.();
    const t0 = Date.now();
    let loadError: Error | undefined;
    const loaded = opts.load(relay.port).catch((err: Error) => { loadError = err; });
    const until = t0 + opts.timeoutMs;
    while (relay.deliveries.length < opts.messages && Date.now() < until && !loadError) {
      relay.assertRunning();
      await sleep(100);
      relay.poll();
    }
    await loaded;
    if (loadError) throw loadError;
    const countedAfter = await opts.counter?.();
    const last = relay.deliveries.reduce((m, d) => Math.max(m, d.seenAt), t0);
    const seconds = (last - t0) / 1000;
    // Read at the end of the deliveries, not after the settling pause, so the share is of the busy time.
    let busiestThread = { name: '', coreShare: 0 };
    for (const [id, t] of threadCpu(processTree(relay.rootPid))) {
      const share = (t.seconds - (threadsBefore.get(id)?.seconds ?? 0)) / seconds;
      if (share > busiestThread.coreShare) busiestThread = { name: t.name, coreShare: share };
    }
    await sleep(SETTLE_MS);
    const tree = processTree(relay.rootPid);
    const cpu = cpuSeconds(tree) - cpuBefore;
    const io = ioWriteBytes(tree) - ioBefore;
    const peak = memory.stop();
    const disk = deviceBytesWritten(device) - diskBefore;
    const delivered = relay.deliveries.length;
    const latencies = relay.deliveries.map((d) => d.latencyMs).sort((a, b) => a - b);
    return {
      relay: kind, messages: opts.messages, delivered, seconds, rate: delivered / seconds,
      p50: percentile(latencies, 0.5), p99: percentile(latencies, 0.99),
      cpuSeconds: cpu, cpuMsPerMessage: (cpu * 1000) / delivered, busiestThread,
      diskBytesPerMessage: disk / delivered, processWriteBytesPerMessage: io / delivered,
      peakRss: peak.rss, peakPss: peak.pss,
      ...(countedBefore !== undefined && countedAfter !== undefined ? { counted: countedAfter - countedBefore } : {}),
    };
  } finally {
    memory.stop();
    await relay.stop();
  }
}
