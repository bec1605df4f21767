/*
 * Workers on one machine: `ichidan start --workers N` (or cluster.workers) runs N nodes sharing
 * the listening ports, under a primary process that only supervises them (Node's cluster module).
 *
 * Takes: the validated config (with cluster.redis: the root schema refuses workers without it),
 *   the number of workers, and where to report readiness.
 * Gives: `runPrimary` — forks workers 1..N (each re-runs `ichidan start` with ICHIDAN_WORKER=i);
 *   reports ready once every worker listens, with the shared ports; restarts a worker that dies
 *   (same index, so the same data folder: its queue is reconciled and delivered) after a backoff
 *   that doubles while it keeps dying young; passes SIGHUP (and SIGUSR2, log reopening) to every worker (each reloads its
 *   config file); on SIGTERM/SIGINT stops every worker gracefully, then exits; keeps
 *   dataDir/workers.json (mta-workers-status.ts) and logs every start, exit and restart.
 *   For the worker side: `workerIndex`, `workerConfig` (its own data folder
 *   `dataDir/worker-<i>`, node name `<node>-w<i>`, admin socket in that folder) and `announceReady`.
 * Network: none of its own. The workers' listen() calls go through the primary, which owns the
 *   listening sockets (port 0 included: the n-th listen on port 0 gets the same port in every
 *   worker), so the ports the first ready worker reports are everyone's.
 * Settings: cluster.workers (overridden by --workers), cluster.node, dataDir, admin.
 */
import cluster, { type Worker } from 'node:cluster';
import { createWriteStream } from 'node:fs';
import { availableParallelism } from 'node:os';
import { join } from 'node:path';
import type { Logger } from 'pino';
import { nodeName } from '../queue/cluster/cluster-link.js';
import type { Config } from './mta-config-schema.js';
import type { Notifier } from './mta-notify.js';
import { secureDataDir } from './mta-datadir.js';
import { removeWorkersStatus, writeWorkersStatus, type WorkerStatus } from './mta-workers-status.js';
import { RunMarker } from '../queue/queue-run-marker.js';

/** Set in a worker's environment: its index, 1..N. */
export const WORKER_ENV = 'ICHIDAN_WORKER';

/** A worker that lived this long before dying restarts at once; one that dies younger waits longer each time. */
const STABLE_MS = 30_000;
const FIRST_BACKOFF_MS = 250;
const MAX_BACKOFF_MS = 30_000;

/**
 * How long a dead worker waits before it is started again: at once after a stable life, then
 * 250 ms, 500 ms, 1 s … up to 30 s while it keeps dying within STABLE_MS of its start.
 * Returns the new streak (restarts in a row of a worker that died young) with the delay.
 */
export function restartDelay(streak: number, livedMs: number): { streak: number; delayMs: number } {
  const next = livedMs >= STABLE_MS ? 0 : streak + 1;
  return { streak: next, delayMs: next === 0 ? 0 : Math.min(MAX_BACKOFF_MS, FIRST_BACKOFF_MS * 2 ** (next - 1)) };
}

/** A bound listener as a node reports it (mta-daemon.ts BoundListener; not imported: the CLI reaches this file, never the daemon). */
interface Listening { name: string; role: string; address: string; port: number }

interface ReadyMessage { ichidan: 'ready'; listeners: Listening[] }

/** How many node processes the config asks for on this machine ("auto": one per core). */
export function workerCount(config: Config): number {
  return config.cluster.workers === 'auto' ? availableParallelism() : config.cluster.workers;
}

/** This process's worker index when it runs as one of the primary's workers, else null. */
export function workerIndex(): number | null {
  if (!cluster.isWorker) return null;
  const index = Number(process.env[WORKER_ENV]);
  return Number.isInteger(index) && index >= 1 ? index : null;
}

export function workerDataDir(dataDir: string, index: number): string {
  return join(dataDir, `worker-${index}`);
}

/**
 * Worker `index`'s own config: its data folder (spool, SQLite, admin socket), its node name. The
 * TCP admin port is left out: one port cannot serve N processes' APIs (each has its socket).
 */
export function workerConfig(config: Config, index: number): Config {
  const { port: _port, ...admin } = config.admin;
  return Object.freeze({
    ...config,
    dataDir: workerDataDir(config.dataDir, index),
    admin: Object.freeze({ ...admin, socket: undefined }),
    cluster: Object.freeze({ ...config.cluster, node: `${nodeName(config.cluster, config.dataDir)}-w${index}` }),
  });
}

/** Says a node is listening: to the primary when this is a worker, else on ICHIDAN_READY_FD=3 (supervisors, tests). */
export function announceReady(listeners: Listening[], extra: Record<string, unknown> = {}): void {
  if (cluster.isWorker) {
    process.send?.({ ichidan: 'ready', listeners } satisfies ReadyMessage);
    return;
  }
  if (process.env.ICHIDAN_READY_FD === '3') {
    createWriteStream('', { fd: 3 }).end(JSON.stringify({ ready: true, listeners, ...extra }) + '\n');
  }
}

interface Slot extends WorkerStatus {
  worker: Worker | null;
  /** Restarts in a row of a worker that died young: the backoff's exponent. */
  streak: number;
  timer: NodeJS.Timeout | null;
}

/**
 * Runs the primary until SIGTERM or SIGINT has stopped every worker; exits 1 when a worker dies
 * before all were first ready (a node that cannot start would only crash again).
 */
export async function runPrimary(config: Config, count: number, log: Logger, notifier?: Notifier): Promise<void> {
  await secureDataDir(config.dataDir, log);
  // The data folder is this primary's: another one (or a single process) running on it is refused
  // before anything in it is touched, its workers' status file first.
  const marker = new RunMarker(config.dataDir);
  await marker.begin();
  // Round-robin in the primary (SCHED_RR), chosen by measuring it against the kernel's choice
  // (SCHED_NONE): 2 workers, 3,000 messages of 2 KB from 20 smtp-source sessions, reused and one
  // per connection, twice each, on this 2-core machine. Throughput was the same within the noise
  // of a shared machine (RR 150-421 msg/s, kernel 267-385); the split was not: RR gave each
  // worker 49-53 % of the mail, the kernel gave one worker 54-55 % in three runs of four (the
  // worker it wakes keeps winning the accept race while busy). Passing each connection from the
  // primary costs little beside an SMTP session. NODE_CLUSTER_SCHED_POLICY=none|rr still decides
  // when set, for measuring again (npm run bench:cluster).
  if (process.env.NODE_CLUSTER_SCHED_POLICY === undefined) cluster.schedulingPolicy = cluster.SCHED_RR;
  const startedAt = Date.now();
  const base = nodeName(config.cluster, config.dataDir);
  const slots: Slot[] = Array.from({ length: count }, (_, i) => ({
    index: i + 1, pid: null, state: 'starting', restarts: 0, startedAt, node: `${base}-w${i + 1}`,
    dataDir: workerDataDir(config.dataDir, i + 1), worker: null, streak: 0, timer: null,
  }));
  let stopping = false;
  let allReady = false;
  let done: () => void = () => undefined;
  const finished = new Promise<void>((r) => { done = r; });

  const publish = () => {
    if (stopping && slots.every((s) => s.state === 'stopped')) return;
    writeWorkersStatus(config.dataDir, {
      primary: process.pid, startedAt,
      workers: slots.map(({ index, pid, state, restarts, startedAt: since, node, dataDir }) => ({ index, pid, state, restarts, startedAt: since, node, dataDir })),
    });
  };

  const stopAll = (signal: string) => {
    if (stopping) return;
    stopping = true;
    log.info({ signal, workers: count }, 'stopping: every worker finishes its open transactions');
    for (const slot of slots) {
      if (slot.timer) clearTimeout(slot.timer);
      slot.timer = null;
      if (slot.worker && slot.state !== 'stopped') {
        slot.state = 'stopping';
        slot.worker.process.kill('SIGTERM');
      } else {
        slot.state = 'stopped';
      }
    }
    publish();
    if (slots.every((s) => s.state === 'stopped')) done();
  };

  const fork = (slot: Slot) => {
    slot.timer = null;
    const worker = cluster.fork({ [WORKER_ENV]: String(slot.index), ICHIDAN_READY_FD: '' });
    Object.assign(slot, { worker, pid: worker.process.pid ?? null, state: 'starting', startedAt: Date.now() });
    log.info({ worker: slot.index, pid: slot.pid, restarts: slot.restarts }, 'worker started');
    publish();
    worker.on('message', (msg: ReadyMessage) => {
      if (msg?.ichidan !== 'ready' || slot.worker !== worker) return;
      slot.state = 'running';
      log.info({ worker: slot.index, pid: slot.pid }, 'worker listening');
      publish();
      if (!allReady && slots.every((s) => s.state === 'running')) {
        allReady = true;
        log.info({ workers: count, listeners: msg.listeners }, 'every worker is listening');
        announceReady(msg.listeners, { workers: slots.map((s) => ({ index: s.index, pid: s.pid })) });
        notifier?.ready();
      }
    });
    worker.on('exit', (code, signal) => {
      if (slot.worker !== worker) return;
      slot.worker = null;
      slot.pid = null;
      const lived = Date.now() - slot.startedAt;
      if (stopping) {
        slot.state = 'stopped';
        log.info({ worker: slot.index, code, signal }, 'worker stopped');
        publish();
        if (slots.every((s) => s.state === 'stopped')) done();
        return;
      }
      if (!allReady) {
        log.error({ worker: slot.index, code, signal }, 'a worker exited before every worker was listening: stopping');
        process.exitCode = 1;
        slot.state = 'stopped';
        stopAll('start failed');
        return;
      }
      const { streak, delayMs: delay } = restartDelay(slot.streak, lived);
      slot.streak = streak;
      slot.state = 'restarting';
      slot.restarts++;
      log.warn({ worker: slot.index, code, signal, livedMs: lived, restartInMs: delay, restarts: slot.restarts }, 'worker exited: restarting it');
      publish();
      slot.timer = setTimeout(() => fork(slot), delay);
    });
  };

  process.on('SIGHUP', () => {
    const live = slots.filter((s) => s.worker && s.state === 'running');
    log.info({ workers: live.map((s) => s.index) }, 'reload: passing SIGHUP to every worker');
    notifier?.reloading();
    for (const slot of live) slot.worker!.process.kill('SIGHUP');
    notifier?.ready();
  });
  // log.file reopened by every worker too (logrotate's signal).
  process.on('SIGUSR2', () => {
    for (const slot of slots) if (slot.worker && slot.state === 'running') slot.worker.process.kill('SIGUSR2');
  });
  process.on('SIGTERM', () => { notifier?.stopping(); stopAll('SIGTERM'); });
  process.on('SIGINT', () => { notifier?.stopping(); stopAll('SIGINT'); });
  log.info({ workers: count, dataDir: config.dataDir, scheduling: cluster.schedulingPolicy === cluster.SCHED_RR ? 'round-robin' : 'kernel' }, 'primary: starting workers');
  if (config.admin.port !== undefined) log.warn({ setting: 'admin.port' }, 'workers serve the admin API on their own sockets only (dataDir/worker-<i>/admin.sock), not on admin.port');
  for (const slot of slots) fork(slot);
  await finished;
  removeWorkersStatus(config.dataDir);
  await marker.end().catch((err) => log.error({ err }, 'could not remove the run marker'));
  log.info('stopped');
}
