/*
 * What is kept about scanning: one record per scanned message, and statistics per engine and
 * day — the numbers an operator needs to decide which vendor to keep.
 *
 * Takes: a `ScanDecision` (engines-run.ts).
 * Gives: a `ScanRecord` (stored as one row by the queue store, also for refused messages) and
 *   `EngineStats`, counters per (day, engine): scanned, detected, detected by this engine alone
 *   (no other counted engine of its kind found anything in that message), errors, timeouts,
 *   skipped, and a latency histogram from which p50 / p99 are read.
 * Days are UTC dates.
 */
import type { EngineErrorKind, EngineKind } from './engine.js';
import type { ScanDecision } from './engines-run.js';
import type { EngineRun, VerdictAction } from './engines-verdict.js';

export interface RunRecord {
  engine: string;
  kind: EngineKind;
  shadow: boolean;
  status: 'clean' | 'infected' | 'spam' | 'violation' | 'unscannable' | 'error' | 'skipped';
  /** Why an engine could not judge the message (status unscannable). */
  reason?: string;
  error?: EngineErrorKind;
  message?: string;
  signature?: string;
  score?: number;
  threshold?: number;
  action?: string;
  symbols?: string[];
  rule?: string;
  skipped?: 'size' | 'disabled';
  version: string | null;
  ms: number;
  detail?: Record<string, unknown>;
}

export interface ScanRecord {
  queueId: string;
  at: number;
  /** The config snapshot whose engines scanned it. */
  generation: number;
  action: VerdictAction;
  reason: string;
  tenants: string[];
  ms: number;
  overheadMs: number;
  runs: RunRecord[];
}

const round = (ms: number) => Math.round(ms * 100) / 100;

export function runRecord(run: EngineRun): RunRecord {
  const base = { engine: run.engine, kind: run.kind, shadow: run.shadow, version: run.version ?? null, ms: round(run.ms) };
  if (!run.result) return { ...base, status: 'skipped', skipped: run.skipped };
  const o = run.result.outcome;
  const detail = run.result.detail;
  switch (o.status) {
    case 'clean':
    case 'spam':
      return { ...base, status: o.status, detail, ...(o.score ? { score: o.score.score, threshold: o.score.threshold, action: o.score.action, symbols: o.score.symbols } : {}) };
    case 'infected': return { ...base, status: 'infected', signature: o.signature, detail };
    case 'violation': return { ...base, status: 'violation', rule: o.rule, action: o.action, detail };
    case 'unscannable': return { ...base, status: 'unscannable', reason: o.reason, detail };
    case 'error': return { ...base, status: 'error', error: o.error, message: o.message, detail };
  }
}

export function scanRecord(queueId: string, tenants: string[], decision: ScanDecision, at: number, generation: number): ScanRecord {
  return {
    queueId, at, tenants, generation,
    action: decision.verdict.action,
    reason: decision.verdict.reason,
    ms: round(decision.ms),
    overheadMs: round(decision.overheadMs),
    runs: decision.runs.map(runRecord),
  };
}

/** Latency histogram: bucket i holds samples up to BOUNDS[i] ms; the last bucket is open-ended. */
export const BOUNDS: number[] = Array.from({ length: 64 }, (_, i) => Math.round(0.1 * 1.25 ** i * 1000) / 1000);

export interface StatRow {
  day: string;
  engine: string;
  scanned: number;
  detected: number;
  detectedAlone: number;
  errors: number;
  timeouts: number;
  skipped: number;
  histogram: number[];
}

export function dayOf(at: number): string {
  return new Date(at).toISOString().slice(0, 10);
}

export function percentile(histogram: number[], p: number): number | null {
  const total = histogram.reduce((a, b) => a + b, 0);
  if (total === 0) return null;
  let seen = 0;
  for (let i = 0; i < histogram.length; i++) {
    seen += histogram[i];
    if (seen >= total * p) return BOUNDS[Math.min(i, BOUNDS.length - 1)];
  }
  return BOUNDS[BOUNDS.length - 1];
}

const DETECTED = new Set(['infected', 'spam', 'violation']);

export class EngineStats {
  readonly #rows = new Map<string, StatRow>();
  readonly #dirty = new Set<string>();

  /** Starts from rows already stored (today's, after a restart). */
  load(rows: StatRow[]): void {
    for (const r of rows) this.#rows.set(`${r.day}\0${r.engine}`, { ...r, histogram: [...r.histogram] });
  }

  /** Counts runs that ended after the record was made (shadow engines), judged against the record's. */
  addLate(record: ScanRecord, late: RunRecord[]): void {
    this.#count(record.at, [...record.runs, ...late], late);
  }

  add(record: ScanRecord): void {
    this.#count(record.at, record.runs, record.runs);
  }

  #count(at: number, all: RunRecord[], counting: RunRecord[]): void {
    const record = { at, runs: all };
    const day = dayOf(record.at);
    const detectors = (kind: EngineKind) => record.runs.filter((r) => !r.shadow && r.kind === kind && DETECTED.has(r.status)).length;
    for (const run of counting) {
      const key = `${day}\0${run.engine}`;
      let row = this.#rows.get(key);
      if (!row) {
        row = { day, engine: run.engine, scanned: 0, detected: 0, detectedAlone: 0, errors: 0, timeouts: 0, skipped: 0, histogram: new Array(BOUNDS.length).fill(0) };
        this.#rows.set(key, row);
      }
      this.#dirty.add(key);
      if (run.status === 'skipped') {
        row.skipped++;
        continue;
      }
      if (run.status === 'error') {
        if (run.error === 'timeout') row.timeouts++;
        else row.errors++;
        continue;
      }
      row.scanned++;
      const bucket = BOUNDS.findIndex((b) => run.ms <= b);
      row.histogram[bucket < 0 ? BOUNDS.length - 1 : bucket]++;
      if (DETECTED.has(run.status)) {
        row.detected++;
        // Alone: the only one of its kind that found it (a shadow engine is alone if no counted one did).
        const others = detectors(run.kind) - (run.shadow ? 0 : 1);
        if (others === 0) row.detectedAlone++;
      }
    }
  }

  /** Rows whose write failed: written again at the next flush. */
  restore(rows: StatRow[]): void {
    for (const r of rows) {
      const key = `${r.day}\0${r.engine}`;
      if (this.#rows.has(key)) this.#dirty.add(key);
    }
  }

  /** Rows changed since the last call (absolute values, to be upserted). */
  takeDirty(): StatRow[] {
    const out = [...this.#dirty].map((k) => this.#rows.get(k)!).map((r) => ({ ...r, histogram: [...r.histogram] }));
    this.#dirty.clear();
    for (const key of [...this.#rows.keys()]) {
      if (!this.#dirty.has(key) && key.slice(0, 10) < dayOf(Date.now() - 86_400_000)) this.#rows.delete(key);
    }
    return out;
  }
}
