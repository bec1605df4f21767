/*
 * The admission benchmark's figures and how they are shown: per system, the known senders'
 * latency before and during the flood and their refusals, what became of the flood's messages,
 * memory and CPU; a table with the systems side by side; and the known senders' latency second by
 * second as an asciichart plot, one panel per system on one logarithmic scale.
 *
 * Takes: each system's attempts (bench-admission-load.ts), the phase boundaries, the readings.
 * Gives: `summarize()` → SystemFigures, `table()` and `plot()` → text.
 */
import asciichart from 'asciichart';
import type { Attempt } from './bench-admission-load.js';
import { percentile } from './bench-stats.js';

export interface Phases {
  /** Attempts started before this (ms since the run's origin) are left out of "before": warm-up. */
  warmupEnd: number;
  floodStart: number;
  floodEnd: number;
}

export interface Latency { n: number; p50: number; p99: number }

/** Where an accepted message's time went: to the greeting, and from the final dot to the reply (scan, commit). */
export interface Parts { greetP50: number; greetP99: number; dotP50: number; dotP99: number }

export interface SystemFigures {
  system: string;
  knownBefore: Latency;
  knownFlood: Latency;
  knownFloodParts: Parts;
  /** Known messages not accepted (any 4xx or 5xx, a connection that failed or timed out), whole run. */
  knownRefused: number;
  knownRefusedFlood: number;
  unknown: {
    offered: number;
    accepted: number;
    /** 4xx at any stage: the sender keeps the message and retries later. */
    deferred: number;
    deferredAtConnect: number;
    rejected: number;
    failed: number;
    /** Not started: the generator's cap on attempts in flight was full. */
    skipped: number;
  };
  /** Connections dropped with the accept queue full during the run (machine-wide; see listenDrops). */
  listenDrops: number;
  rssMb: number;
  /** Shared pages split among the processes sharing them (Postfix's many smtpd share most of theirs). */
  pssMb: number;
  /** Shares of a core over the system's run (server, engine, generator, others); machine: of all cores. */
  cpu: { server: number; engine: number | null; generator: number; others: number; machine: number };
  levels: string;
}

const parts = (attempts: Attempt[]): Parts => {
  const ok = attempts.filter((a) => a.outcome === 'accepted');
  const greet = ok.map((a) => a.greetMs ?? NaN).filter(Number.isFinite).sort((a, b) => a - b);
  const dot = ok.map((a) => a.dotMs ?? NaN).filter(Number.isFinite).sort((a, b) => a - b);
  return { greetP50: percentile(greet, 0.5), greetP99: percentile(greet, 0.99), dotP50: percentile(dot, 0.5), dotP99: percentile(dot, 0.99) };
};

const latency = (attempts: Attempt[]): Latency => {
  const ms = attempts.filter((a) => a.outcome === 'accepted').map((a) => a.ms).sort((a, b) => a - b);
  return { n: ms.length, p50: percentile(ms, 0.5), p99: percentile(ms, 0.99) };
};

export function summarize(system: string, known: Attempt[], flood: Attempt[], floodSkipped: number, phases: Phases,
  readings: Pick<SystemFigures, 'listenDrops' | 'rssMb' | 'pssMb' | 'cpu' | 'levels'>): SystemFigures {
  const inFlood = (a: Attempt) => a.at >= phases.floodStart && a.at < phases.floodEnd;
  const before = known.filter((a) => a.at >= phases.warmupEnd && a.at < phases.floodStart);
  const refused = known.filter((a) => a.outcome !== 'accepted');
  const count = (outcome: Attempt['outcome']) => flood.filter((a) => a.outcome === outcome).length;
  return {
    system,
    knownBefore: latency(before),
    knownFlood: latency(known.filter(inFlood)),
    knownFloodParts: parts(known.filter(inFlood)),
    knownRefused: refused.length,
    knownRefusedFlood: refused.filter(inFlood).length,
    unknown: {
      offered: flood.length + floodSkipped,
      accepted: count('accepted'), deferred: count('deferred'),
      deferredAtConnect: flood.filter((a) => a.outcome === 'deferred' && a.stage === 'connect').length,
      rejected: count('rejected'), failed: count('failed'), skipped: floodSkipped,
    },
    ...readings,
  };
}

const ms = (v: number) => (Number.isFinite(v) ? `${v < 10 ? v.toFixed(1) : v.toFixed(0)} ms` : '-');
const pct = (v: number | null) => (v === null ? '-' : `${v.toFixed(0)} %`);

/** The systems side by side, a row per figure. */
export function table(rows: SystemFigures[]): string {
  const lines: Array<[string, ...string[]]> = [
    ['', ...rows.map((r) => r.system)],
    ['known: accepted before / during flood', ...rows.map((r) => `${r.knownBefore.n} / ${r.knownFlood.n}`)],
    ['known p50 before the flood', ...rows.map((r) => ms(r.knownBefore.p50))],
    ['known p99 before the flood', ...rows.map((r) => ms(r.knownBefore.p99))],
    ['known p50 during the flood', ...rows.map((r) => ms(r.knownFlood.p50))],
    ['known p99 during the flood', ...rows.map((r) => ms(r.knownFlood.p99))],
    ['  of it: to the greeting p50 / p99', ...rows.map((r) => `${ms(r.knownFloodParts.greetP50)} / ${ms(r.knownFloodParts.greetP99)}`)],
    ['  of it: final dot to 250 p50 / p99', ...rows.map((r) => `${ms(r.knownFloodParts.dotP50)} / ${ms(r.knownFloodParts.dotP99)}`)],
    ['known p99 during / before', ...rows.map((r) => (Number.isFinite(r.knownFlood.p99 / r.knownBefore.p99) ? `${(r.knownFlood.p99 / r.knownBefore.p99).toFixed(2)}x` : '-'))],
    ['known refused (4xx, 5xx, failed)', ...rows.map((r) => `${r.knownRefused} (${r.knownRefusedFlood} in the flood)`)],
    ['unknown offered', ...rows.map((r) => String(r.unknown.offered))],
    ['unknown accepted', ...rows.map((r) => String(r.unknown.accepted))],
    ['unknown deferred (4xx; retried later)', ...rows.map((r) => `${r.unknown.deferred} (${r.unknown.deferredAtConnect} at connect)`)],
    ['unknown rejected (5xx)', ...rows.map((r) => String(r.unknown.rejected))],
    ['unknown failed (conn. / timeout)', ...rows.map((r) => String(r.unknown.failed))],
    ['unknown not sent (generator cap)', ...rows.map((r) => String(r.unknown.skipped))],
    ['SYNs dropped, accept queue full', ...rows.map((r) => String(r.listenDrops))],
    ['RSS peak (sum over processes)', ...rows.map((r) => `${r.rssMb.toFixed(0)} MB`)],
    ['PSS peak (shared pages split)', ...rows.map((r) => `${r.pssMb.toFixed(0)} MB`)],
    ['CPU: server (of a core)', ...rows.map((r) => pct(r.cpu.server))],
    ['CPU: scanning engine', ...rows.map((r) => pct(r.cpu.engine))],
    ['CPU: generator', ...rows.map((r) => pct(r.cpu.generator))],
    ['CPU: other processes', ...rows.map((r) => pct(r.cpu.others))],
    ['CPU: whole machine (of all cores)', ...rows.map((r) => pct(r.cpu.machine))],
    ['admission levels', ...rows.map((r) => r.levels)],
  ];
  const widths = lines[0].map((_, i) => Math.max(...lines.map((l) => (l[i] ?? '').length)));
  return lines.map((l) => l.map((c, i) => (i === 0 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join('   ')).join('\n');
}

/**
 * Each second's slowest accepted known message (by the second it started in; with a few dozen a
 * second this is their p99), from second 0 to `seconds`; a second with none accepted repeats the
 * last value (null before the first).
 */
export function perSecond(known: Attempt[], seconds: number): Array<number | null> {
  const worst: Array<number | null> = Array.from({ length: seconds }, () => null);
  for (const a of known) {
    const s = Math.floor(a.at / 1000);
    if (a.outcome === 'accepted' && s < seconds) worst[s] = Math.max(worst[s] ?? 0, a.ms);
  }
  let last: number | null = null;
  return worst.map((v) => (last = v ?? last));
}

const LEVEL_MARK: Record<string, string> = { normal: 'n', busy: 'b', overload: 'O' };

/** A second's admission level as one character: n normal, b busy, O overload, ? not read. */
export const levelStrip = (levels: Array<string | null>) => levels.map((l) => (l === null ? '?' : LEVEL_MARK[l] ?? '?')).join('');

/**
 * One panel per system, every panel on the same log10 scale, and a time axis marking the flood;
 * under a panel with `levels`, the admission level of each second (levelStrip).
 */
export function plot(series: Array<{ system: string; values: Array<number | null>; levels?: Array<string | null> }>, floodStartS: number, floodEndS: number): string {
  const logs = series.map((s) => s.values.map((v) => Math.log10(Math.max(1, v ?? 1))));
  const all = logs.flat();
  const min = Math.floor(Math.min(...all) * 2) / 2, max = Math.max(Math.ceil(Math.max(...all) * 2) / 2, min + 1);
  const format = (x: number) => {
    const v = 10 ** x;
    return (v >= 1000 ? `${Number((v / 1000).toPrecision(2))} s` : `${Number(v.toPrecision(2))} ms`).padStart(9);
  };
  const width = Math.max(...series.map((s) => s.values.length));
  const axis = Array.from({ length: width }, (_, s) => (s === floodStartS ? '^' : s === floodEndS ? '^' : s % 10 === 0 ? '|' : '-')).join('');
  const labels = Array.from({ length: width }, () => ' ');
  for (let s = 0; s < width; s += 10) String(s).split('').forEach((ch, i) => { if (s + i < width) labels[s + i] = ch; });
  const out: string[] = [];
  series.forEach((s, i) => {
    out.push(`${s.system}: known senders, slowest accepted message per second (log scale)`);
    out.push(asciichart.plot(logs[i], { min, max, height: 8, format }));
    out.push(`${' '.repeat(11)}${axis}`);
    if (s.levels) out.push(`${'level'.padStart(9)}  ${levelStrip(s.levels)}`);
  });
  out.push(`${' '.repeat(11)}${labels.join('')} s   (^ flood from ${floodStartS} s to ${floodEndS} s`
    + `${series.some((s) => s.levels) ? '; level: n normal, b busy, O overload, ? not read' : ''})`);
  return out.join('\n');
}
