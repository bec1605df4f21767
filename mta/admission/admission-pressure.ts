/*
 * Pressure: this node's measured signals, read every admission.pressure.interval and turned into a
 * level (admission-levels.ts), and whether the queue takes new mail.
 *
 * Takes: the admission.pressure settings; sources for what other parts measure — sessions open
 *   against the admission listeners' maxClients, scans' wait and latency p90 over the last interval
 *   (the scan slots, heard through `ScanTimings`), the MX query ratio (the DNS responder, optional); the spool's fsync p99 and its
 *   file system's free share (queue/); a logger.
 * Gives: `level` and its 'level' event (level, previous, why — `why` names the signals that drove
 *   it and their values), logged at every change; `signals()`, each signal's last value and own
 *   level; `status()` for the admin API; `intake()`: 'paused' while free disk or free memory is at
 *   its overload floor (entered at once, left once above the floor plus hysteresis), so the queue
 *   stops taking new mail before the spool runs out (KumoMTA's load shedding; MAIL FROM answers
 *   452 4.3.1 meanwhile), with an 'intake' event (state, why) at each change.
 * Surges: between two full reads, the cheap signals that count waiting clients (acceptQueue,
 *   sessions) and the connections' rate over the span since the last such reading are read every
 *   admission.pressure.surgeInterval, and a reading at or past its `surge`
 *   threshold enters overload at once (admission-levels.ts `surgeLevels`): a connection flood fills
 *   the accept queue within a fraction of a second, and every connection in it, known senders'
 *   among them, waits there before Ichidan can tell who it is.
 * Reads itself: the event loop's delay — a timer every 20 ms records how late it fired (p99 over
 *   the interval, or how late the next one is already, when that is more: a loop held for the
 *   whole interval fires no timer at all). perf_hooks' monitorEventLoopDelay is not used: after
 *   each reset its first tick only primes it, so a loop held between every two reads showed no
 *   delay at all. And the memory free (admission-memory.ts: the cgroup's limit where one is set,
 *   else the host's available memory). Timers are unref'd; `stop()` ends them and drops the level back to
 *   normal.
 * Settings: admission.pressure.*
 */
import { EventEmitter } from 'node:events';
import type { Logger } from 'pino';
import { LatencyWindow } from '../../base/base-latency-window.js';
import type { ScanSlotsStatus, SlotObserver } from '../../queue/accept/accept-slots.js';
import type { PressureConfig } from './admission-config.js';
import { memoryFree } from './admission-memory.js';
import {
  clearOf, enterOverload, initialLevels, isFloor, readings, signalLevel, SIGNALS, stepLevels, surgeLevels,
  type Level, type LevelChange, type LevelState, type SignalName, type SignalReading, type SignalValues,
} from './admission-levels.js';

export type { Level, SignalName } from './admission-levels.js';
export type { PressureConfig } from './admission-config.js';

export interface PressureSources {
  /**
   * Sessions wanted on the admission listeners, and the sum of their maxClients. `peek`: a reading
   * between two full reads (the surge check), which must leave the source's counts as they are.
   */
  sessions(peek?: boolean): { open: number; limit: number };
  /** Scans' wait for a slot and their latency, p90 over the last interval. */
  scans(): { waitP90Ms: number | null; latencyP90Ms: number | null; queued?: number | null };
  /** Connections waiting in the kernel's accept queue of the admission listeners (null: not known). */
  acceptQueue?(): number | null;
  /** MX queries per second against their normal rate; null until a normal rate is known. */
  mxQueryRatio?(): number | null;
  /** Connections per second to the admission listeners (refused ones too) against their normal rate; null until it is known. */
  connectionRatio?(): number | null;
  /** The same over the span since its last reading (the surge check's). */
  connectionSurgeRatio?(): number | null;
}

export interface SpoolSignals {
  fsyncP99Ms(): number | null;
  diskFree(): number | null;
}

export type Intake = 'open' | 'paused';

/** The scan slots' observer (queue/accept/accept-slots.ts): each wait for a slot and each scan, kept for the scans source. */
export class ScanTimings implements SlotObserver {
  readonly #waits = new LatencyWindow();
  readonly #scans = new LatencyWindow();

  waited(ms: number): void {
    this.#waits.record(ms);
  }

  scanned(ms: number): void {
    this.#scans.record(ms);
  }

  /** The scans source: wait and latency p90 over the last `windowMs` (null when none ended in it). */
  p90(windowMs: number): ReturnType<PressureSources['scans']> {
    return { waitP90Ms: this.#waits.percentile(90, windowMs), latencyP90Ms: this.#scans.percentile(90, windowMs) };
  }
}

/** What the admin API and `ichidan admission status` show. */
export interface PressureStatus {
  level: Level;
  /** When the level was entered (epoch ms). */
  since: number;
  intake: Intake;
  /** Each signal: its last value (ms for times, a share for sessions and free space, a multiple for MX queries), thresholds and own level. */
  signals: Record<SignalName, SignalReading & { busy: number; overload: number; floor: boolean }>;
}

/** What GET /v1/admission answers: the mode, and the pressure as measured (all normal while not measuring). */
export type AdmissionStatus = PressureStatus & {
  mode: 'on' | 'observe' | 'off';
  measuring: boolean;
  /** Known senders' own accept queue, per listener that has one (ingress/ingress-known-queue.ts). */
  knownQueues: Array<{ listener: string; networks: number; left: number; accepted: number; refusing: boolean; refused: number; surges: number }>;
  /** The scan slots: in use, waiting, and the unknown senders' limit (queue/accept/accept-slots.ts). */
  scans: ScanSlotsStatus;
};

/** Clock and readers that tests replace; the defaults are the real ones. */
export interface PressureProbes {
  now(): number;
  memoryFree(): number | null;
  /** The event loop's delay p99 over the last interval, ms (null: not measured). */
  loopDelayP99Ms(): number | null;
}

const INTAKE_SIGNALS: readonly SignalName[] = ['diskFree', 'memoryFree'];
/** How often the event-loop sampler's timer is due. */
const LOOP_SAMPLE_MS = 20;

export class Pressure extends EventEmitter {
  #config: PressureConfig;
  #state: LevelState;
  #signals: Record<SignalName, SignalReading>;
  #intake: Intake = 'open';
  #timer: NodeJS.Timeout | null = null;
  #surgeTimer: NodeJS.Timeout | null = null;
  #sampler: NodeJS.Timeout | null = null;
  /** When the sampler last fired (performance.now()). */
  #lastSample = 0;
  readonly #loopDelays = new LatencyWindow(512);
  /** Sources that threw at their last read (logged once). */
  readonly #failing = new Set<string>();
  readonly #probes: PressureProbes;

  constructor(config: PressureConfig, private readonly sources: PressureSources, private readonly spool: SpoolSignals, private readonly log: Logger, probes: Partial<PressureProbes> = {}) {
    super();
    this.#config = config;
    this.#probes = {
      now: probes.now ?? Date.now,
      memoryFree: probes.memoryFree ?? (() => memoryFree()),
      loopDelayP99Ms: probes.loopDelayP99Ms ?? (() => this.#loopDelay()),
    };
    this.#state = initialLevels(this.#probes.now());
    this.#signals = readings({}, config);
  }

  get level(): Level {
    return this.#state.level;
  }

  /** When the current level was entered (epoch ms). */
  get since(): number {
    return this.#state.since;
  }

  signals(): Record<string, SignalReading> {
    return { ...this.#signals };
  }

  /** 'paused' while free disk or memory is at its overload floor: new mail is to be refused with 452 4.3.1. */
  intake(): Intake {
    return this.#intake;
  }

  status(): PressureStatus {
    const signals = {} as PressureStatus['signals'];
    for (const s of SIGNALS) signals[s] = { ...this.#signals[s], busy: this.#config[s].busy, overload: this.#config[s].overload, floor: isFloor(s) };
    return { level: this.level, since: this.since, intake: this.#intake, signals };
  }

  start(): void {
    if (this.#timer) return;
    this.#state = initialLevels(this.#probes.now());
    this.#lastSample = performance.now();
    this.#sampler = setInterval(() => {
      const now = performance.now();
      this.#loopDelays.record(Math.max(0, now - this.#lastSample - LOOP_SAMPLE_MS), now);
      this.#lastSample = now;
    }, LOOP_SAMPLE_MS);
    this.#sampler.unref();
    this.#schedule();
  }

  stop(): void {
    if (this.#timer) clearInterval(this.#timer);
    this.#timer = null;
    if (this.#surgeTimer) clearInterval(this.#surgeTimer);
    this.#surgeTimer = null;
    if (this.#sampler) clearInterval(this.#sampler);
    this.#sampler = null;
    this.#state = initialLevels(this.#probes.now());
    this.#signals = readings({}, this.#config);
    this.#intake = 'open';
  }

  /** Whether the signals are being read (start() was called and stop() not since). */
  get running(): boolean {
    return this.#timer !== null;
  }

  /** A reloaded config: new thresholds at the next read, a new interval from now. */
  apply(config: PressureConfig): void {
    const interval = config.interval !== this.#config.interval || config.surgeInterval !== this.#config.surgeInterval;
    this.#config = config;
    if (interval && this.#timer) {
      clearInterval(this.#timer);
      if (this.#surgeTimer) clearInterval(this.#surgeTimer);
      this.#schedule();
    }
  }

  /** Reads every signal once and moves the level (the timer calls it; tests may too). */
  read(): void {
    const values = this.#measure();
    const now = this.#probes.now();
    const { state, change, signals } = stepLevels(this.#state, values, this.#config, now);
    this.#state = state;
    this.#signals = signals;
    this.#updateIntake(values);
    if (change) this.#changed(change, values);
  }

  /**
   * Reads the cheap signals that count waiting clients (the surge timer calls it; tests may too):
   * overload at once when one is at or past its surge threshold. Their full readings, and every
   * other rule, wait for the next read().
   */
  readSurge(): void {
    if (this.#state.level === 'overload') return;
    const sessions = this.#safely('sessions', () => this.sources.sessions(true));
    const values: SignalValues = {
      acceptQueue: this.#safely('acceptQueue', () => this.sources.acceptQueue?.() ?? null),
      sessions: sessions && sessions.limit > 0 ? sessions.open / sessions.limit : null,
      connections: this.#safely('connections', () => this.sources.connectionSurgeRatio?.() ?? null),
    };
    this.#surged(values);
  }

  /** Readings of the surge check: overload at once where one is at or past its surge threshold. */
  #surged(values: SignalValues): void {
    const surge = surgeLevels(this.#state, values, this.#config, this.#probes.now());
    if (!surge) return;
    this.#state = surge.state;
    for (const s of SIGNALS) if (s in values) this.#signals[s] = { value: values[s] ?? null, level: signalLevel(s, values[s], this.#config) };
    this.#changed(surge.change, values);
  }

  /**
   * A flood a known queue's guard met at `listener`'s socket (its general queue held `waiting`,
   * at or past `at`: admission.knownQueueGuard) before the event loop could: overload at once,
   * as a surge of the accept queue.
   */
  guarded(listener: string, waiting: number, at: number): void {
    // Not measuring (admission.mode no longer on, or stopped): no level to move.
    if (!this.running) return;
    const surge = enterOverload(this.#state, ['acceptQueue'], `acceptQueue=${waiting} ≥ ${at} (the known queue's guard on ${listener})`, this.#probes.now());
    if (!surge) return;
    this.#state = surge.state;
    this.#signals.acceptQueue = { value: waiting, level: signalLevel('acceptQueue', waiting, this.#config) };
    this.#changed(surge.change, { acceptQueue: waiting });
  }

  #changed(change: LevelChange, values: SignalValues): void {
    const shown = Object.fromEntries(SIGNALS.filter((s) => values[s] !== null && values[s] !== undefined).map((s) => [s, values[s]]));
    this.log.info({ level: change.level, previous: change.previous, why: change.why, signals: shown }, `pressure ${change.previous} → ${change.level}: ${change.why}`);
    this.emit('level', change.level, change.previous, change.why);
  }

  #schedule(): void {
    this.#timer = setInterval(() => this.read(), this.#config.interval);
    this.#timer.unref();
    this.#surgeTimer = null;
    if (this.#config.surgeInterval > 0 && this.#config.surgeInterval < this.#config.interval) {
      this.#surgeTimer = setInterval(() => this.readSurge(), this.#config.surgeInterval);
      this.#surgeTimer.unref();
    }
  }

  #measure(): SignalValues {
    const sessions = this.#safely('sessions', () => this.sources.sessions());
    const scans = this.#safely('scans', () => this.sources.scans());
    return {
      eventLoopDelay: this.#safely('eventLoopDelay', () => this.#probes.loopDelayP99Ms()),
      acceptQueue: this.#safely('acceptQueue', () => this.sources.acceptQueue?.() ?? null),
      sessions: sessions && sessions.limit > 0 ? sessions.open / sessions.limit : null,
      scanQueue: scans?.queued ?? null,
      scanWait: scans?.waitP90Ms ?? null,
      scanLatency: scans?.latencyP90Ms ?? null,
      fsync: this.#safely('fsync', () => this.spool.fsyncP99Ms()),
      diskFree: this.#safely('diskFree', () => this.spool.diskFree()),
      memoryFree: this.#safely('memoryFree', () => this.#probes.memoryFree()),
      mxQueries: this.#safely('mxQueries', () => this.sources.mxQueryRatio?.() ?? null),
      connections: this.#safely('connections', () => this.sources.connectionRatio?.() ?? null),
    };
  }

  /** One source read; one that throws gives no value (its signal counts as normal), logged once until it answers again. */
  #safely<T>(source: string, read: () => T): T | null {
    try {
      const value = read();
      this.#failing.delete(source);
      return value;
    } catch (err) {
      if (!this.#failing.has(source)) this.log.warn({ err, source }, `pressure signal ${source} cannot be read: it counts as normal until it can`);
      this.#failing.add(source);
      return null;
    }
  }

  /** The event loop's delay over the last interval, ms: the p99 of the sampler's lateness, or how late it is now if more. */
  #loopDelay(): number | null {
    if (!this.#sampler) return null;
    const now = performance.now();
    const overdue = Math.max(0, now - this.#lastSample - LOOP_SAMPLE_MS);
    const p99 = this.#loopDelays.percentile(99, this.#config.interval);
    return p99 === null ? overdue : Math.max(p99, overdue);
  }

  /** Paused at once when free disk or memory reaches its overload floor; open again once clear of it by the hysteresis. */
  #updateIntake(values: SignalValues): void {
    const pressed = INTAKE_SIGNALS.filter((s) => this.#signals[s].level === 'overload');
    let next = this.#intake;
    if (pressed.length > 0) next = 'paused';
    else if (INTAKE_SIGNALS.every((s) => clearOf(s, values[s], 'overload', this.#config))) next = 'open';
    if (next === this.#intake) return;
    this.#intake = next;
    const why = next === 'paused'
      ? pressed.map((s) => `${s}=${round(values[s])} ≤ ${this.#config[s].overload}`).join(', ')
      : INTAKE_SIGNALS.map((s) => `${s}=${round(values[s])}`).join(', ');
    const text = next === 'paused' ? `queue intake paused (new mail is refused with 452 4.3.1): ${why}` : `queue intake open again: ${why}`;
    if (next === 'paused') this.log.warn({ intake: next, why }, text);
    else this.log.info({ intake: next, why }, text);
    this.emit('intake', next, why);
  }
}

function round(value: number | null | undefined): string {
  return value === null || value === undefined ? 'unknown' : String(Math.round(value * 1000) / 1000);
}
