/*
 * The pressure level as a pure state machine: measured signals in, `normal` → `busy` →
 * `overload` out, with the time of each step passed in (no clock of its own).
 *
 * Takes: each signal's value (null when it is not measured: it counts as normal), the thresholds
 *   of admission.pressure (`busy` and `overload` per signal; diskFree and memoryFree are floors,
 *   where less is worse), the current state and the time now.
 * Gives: `stepLevels()` → the new state, the change if there was one (with the signals that drove
 *   it, for the log), and every signal's own level. A level is entered once the worst signal has
 *   stayed at or past its threshold for `rise` (overload may be entered straight from normal); it
 *   is left once every signal has stayed below it for `fall`, one level at a time, where below
 *   means below threshold × (1 − hysteresis) (above floor × (1 + hysteresis) for floors), so a
 *   signal hovering at a threshold does not make the level flap. A signal at or past its `surge`
 *   threshold (where one is set) enters overload at once, without `rise`: `surgeLevels()` is that
 *   rule alone, for the readings of the cheap signals taken between two full reads.
 * Settings: admission.pressure.* (rise, fall, hysteresis, and the thresholds per signal).
 */
import type { PressureConfig } from './admission-config.js';
import type { Level } from './admission-decide.js';

export type { Level } from './admission-decide.js';
export const LEVELS: readonly Level[] = ['normal', 'busy', 'overload'];

/** Every signal, as named in admission.pressure, the metrics and the log. */
export const SIGNALS = ['eventLoopDelay', 'acceptQueue', 'sessions', 'scanQueue', 'scanWait', 'scanLatency', 'fsync', 'diskFree', 'memoryFree', 'mxQueries', 'connections'] as const;
export type SignalName = typeof SIGNALS[number];
export type SignalValues = Partial<Record<SignalName, number | null>>;

/** Signals where less is worse. */
const FLOORS: ReadonlySet<SignalName> = new Set(['diskFree', 'memoryFree']);

export function isFloor(signal: SignalName): boolean {
  return FLOORS.has(signal);
}

export type LevelThresholds = Pick<PressureConfig, SignalName>;
export type LevelTiming = Pick<PressureConfig, 'rise' | 'fall' | 'hysteresis'>;

export interface LevelState {
  level: Level;
  /** When the current level was entered (ms, the caller's clock). */
  since: number;
  /** Since when the worst signal has been at or past busy, and overload, without a break (null: it is not). */
  rising: { busy: number | null; overload: number | null };
  /** Since when every signal has been below the current level (less hysteresis) without a break. */
  falling: number | null;
  /** The signals that drove the last rise: named again when the level comes down. */
  drivers: SignalName[];
}

export interface LevelChange {
  level: Level;
  previous: Level;
  why: string;
}

export interface SignalReading {
  value: number | null;
  level: Level;
}

export function rank(level: Level): number {
  return LEVELS.indexOf(level);
}

export function initialLevels(now: number): LevelState {
  return { level: 'normal', since: now, rising: { busy: null, overload: null }, falling: null, drivers: [] };
}

/** At or past a threshold: at or above it, or at or below it for a floor. */
function reaches(signal: SignalName, value: number, threshold: number): boolean {
  return isFloor(signal) ? value <= threshold : value >= threshold;
}

/** A signal's own level, by its thresholds alone (no hysteresis, no timing); null counts as normal. */
export function signalLevel(signal: SignalName, value: number | null | undefined, thresholds: LevelThresholds): Level {
  if (value === null || value === undefined || Number.isNaN(value)) return 'normal';
  const t = thresholds[signal];
  if (reaches(signal, value, t.overload)) return 'overload';
  if (reaches(signal, value, t.busy)) return 'busy';
  return 'normal';
}

/** Whether a signal is clearly below `level`'s threshold: past it by the hysteresis margin, the good way. */
export function clearOf(signal: SignalName, value: number | null | undefined, level: Exclude<Level, 'normal'>, config: LevelThresholds & LevelTiming): boolean {
  if (value === null || value === undefined || Number.isNaN(value)) return true;
  const threshold = config[signal][level];
  return isFloor(signal) ? value > threshold * (1 + config.hysteresis) : value < threshold * (1 - config.hysteresis);
}

function describe(signal: SignalName, value: number | null | undefined, config: LevelThresholds, level: Level): string {
  const shown = value === null || value === undefined ? 'unknown' : String(Math.round(value * 1000) / 1000);
  if (level === 'normal') return `${signal}=${shown}`;
  const threshold = config[signal][level];
  return `${signal}=${shown} ${isFloor(signal) ? '≤' : '≥'} ${threshold}`;
}

/** Every signal's reading, in SIGNALS order. */
export function readings(values: SignalValues, thresholds: LevelThresholds): Record<SignalName, SignalReading> {
  const out = {} as Record<SignalName, SignalReading>;
  for (const s of SIGNALS) out[s] = { value: values[s] ?? null, level: signalLevel(s, values[s], thresholds) };
  return out;
}

/** A signal's surge threshold, where one is set (none for floors). */
function surgeOf(signal: SignalName, config: LevelThresholds): number | undefined {
  const t = config[signal];
  return 'surge' in t ? t.surge : undefined;
}

/**
 * The surge rule alone: overload at once when any signal given is at or past its surge threshold
 * (null when none is, or the level is overload already). Signals not given are not looked at.
 */
export function surgeLevels(state: LevelState, values: SignalValues, config: LevelThresholds, now: number): { state: LevelState; change: LevelChange } | null {
  const drivers = SIGNALS.filter((s) => {
    const surge = surgeOf(s, config), v = values[s];
    return surge !== undefined && v !== null && v !== undefined && v >= surge;
  });
  if (drivers.length === 0) return null;
  const why = drivers.map((s) => `${s}=${Math.round(values[s]! * 1000) / 1000} ≥ ${surgeOf(s, config)} (surge)`).join(', ');
  return enterOverload(state, drivers, why, now);
}

/** Overload at once, driven by `drivers` for `why` (null when the level is overload already). */
export function enterOverload(state: LevelState, drivers: SignalName[], why: string, now: number): { state: LevelState; change: LevelChange } | null {
  if (state.level === 'overload') return null;
  return {
    state: { ...state, level: 'overload', since: now, falling: null, drivers, rising: { busy: state.rising.busy ?? now, overload: state.rising.overload ?? now } },
    change: { level: 'overload', previous: state.level, why },
  };
}

/**
 * One look at the signals at time `now`: the new state, and the change of level if there is one.
 * A rise wins over a fall; a rise goes to the highest level held for `rise`; a fall goes down one
 * level, and the next one needs another `fall` below it.
 */
export function stepLevels(state: LevelState, values: SignalValues, config: PressureConfig, now: number): { state: LevelState; change: LevelChange | null; signals: Record<SignalName, SignalReading> } {
  const signals = readings(values, config);
  let worst: Level = 'normal';
  for (const s of SIGNALS) if (rank(signals[s].level) > rank(worst)) worst = signals[s].level;
  const rising = {
    busy: rank(worst) >= 1 ? state.rising.busy ?? now : null,
    overload: rank(worst) >= 2 ? state.rising.overload ?? now : null,
  };
  const next: LevelState = { ...state, rising };

  const surge = surgeLevels(next, values, config, now);
  if (surge) return { ...surge, signals };

  // Up: the highest level above the current one that has been reached for `rise`.
  for (const target of ['overload', 'busy'] as const) {
    if (rank(target) <= rank(state.level)) break;
    const from = rising[target];
    if (from === null || now - from < config.rise) continue;
    const drivers = SIGNALS.filter((s) => rank(signals[s].level) >= rank(target));
    const why = drivers.map((s) => describe(s, values[s], config, target)).join(', ');
    return { state: { ...next, level: target, since: now, falling: null, drivers }, change: { level: target, previous: state.level, why }, signals };
  }

  if (state.level === 'normal') return { state: { ...next, falling: null }, change: null, signals };

  // Down: every signal clearly below the current level, for `fall`.
  const current = state.level;
  const clear = SIGNALS.every((s) => clearOf(s, values[s], current, config));
  if (!clear) return { state: { ...next, falling: null }, change: null, signals };
  const falling = state.falling ?? now;
  if (now - falling < config.fall) return { state: { ...next, falling }, change: null, signals };
  const lower: Level = current === 'overload' ? 'busy' : 'normal';
  const named = state.drivers.length > 0 ? state.drivers : SIGNALS.filter((s) => values[s] !== null && values[s] !== undefined);
  const why = `${named.map((s) => describe(s, values[s], config, 'normal')).join(', ')} below ${current} for ${config.fall}ms`;
  // The next level down needs its own `fall`, counted from now when the signals are already clear of it.
  const nextFalling = lower !== 'normal' && SIGNALS.every((s) => clearOf(s, values[s], lower, config)) ? now : null;
  return {
    state: { ...next, level: lower, since: now, falling: nextFalling, drivers: state.drivers },
    change: { level: lower, previous: current, why },
    signals,
  };
}
