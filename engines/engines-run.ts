/*
 * Running the engines on one message: all in parallel, each under its own deadline, then one
 * verdict per tenant of the message and the strongest of them.
 *
 * Takes: the spool file as a `ScanMessage`, the transaction's context, the caller's signal (the
 *   DATA timeout), the built engines and the scanning policy of the snapshot the transaction
 *   borrowed.
 * Shadow engines never hold the reply: the verdict waits for the counted engines only, and a
 * shadow engine still running then is handed back as `late`, to be recorded when it ends.
 * Gives: a `ScanDecision` — the verdict, the SMTP reply for a refusal, and a report of every run
 *   (for the per-message record and the daily statistics).
 *
 * Size: a message above an engine's maxSize is not sent to it; under `oversize: unscannable` (AV
 * and policy engines by default) it is judged not fully scanned, under `skip` left to the others.
 * Deadlines: an engine's scan gets a signal that aborts at its own `timeout` (or when the caller
 * aborts). Adapters stop on it; the runner does not rely on that and answers the timeout itself
 * when the signal fires, so an adapter that ignores it cannot hold the verdict. A local engine
 * (the attachment policy: no daemon, no network) that runs out of time was slowed by the message
 * (many parts, a huge encoded body, a long archive listing): the message is `unscannable`, never
 * clean, and the engine's breaker does not count it, or a sender could switch the engine off.
 *
 * Tenants: a message's recipients may belong to several tenants whose overrides name different
 * engines or thresholds. Each engine runs once (the union of their lists); each tenant's verdict
 * is computed from its own engines with its own policy, and the strongest verdict answers DATA —
 * one transaction gets one reply.
 */
import { contentRefused, notFullyScanned, REPLIES, structureRefused, virusFound, type SmtpReply } from '../base/base-reply.js';
import { errorResult, unscannableResult, type Engine, type EngineKind, type EngineResult, type ScanContext, type ScanMessage } from './engine.js';
import type { Admission } from './engines-breaker.js';
import type { CommonOptions } from './engines-common.js';
import { tenantPolicy, type ScanningConfig, type TenantScanningConfig, type VerdictPolicy } from './engines-config.js';
import { decide, stronger, STRUCTURE_REASON, UNSCANNABLE_REASON, type EngineRun, type Verdict } from './engines-verdict.js';

export interface EngineEntry {
  type: string;
  /** The engine works on the message alone, in this process (engines-registry.ts): its deadline is the message's doing. */
  local?: boolean;
  options: CommonOptions;
  engine: Engine;
  /** The engine's breaker and operator switch; without one the engine is always used. */
  health?: EngineHealth;
}

/** 'skip': switched off now (breaker open or half-open with its probe out, or an operator's switch). */
export interface EngineHealth {
  admit(now: number): Admission;
  record(admission: Admission, result: EngineResult, now: number): void;
  /** The scan ended without a judgement of the engine (the caller aborted). */
  abandon(admission: Admission): void;
}

export interface ScanDecision {
  verdict: Verdict;
  /** The refusal to send for `reject` and `tempfail`. */
  reply: SmtpReply | null;
  runs: EngineRun[];
  /** Shadow engines still running when the verdict was made; their runs, once they end. */
  late: Promise<EngineRun[]> | null;
  /** Wall time of the whole scan, and what it added on top of the slowest engine. */
  ms: number;
  overheadMs: number;
}

const SAFE = /[^\x20-\x7e]/g;
const printable = (s: string, max = 160) => s.replace(SAFE, '?').slice(0, max);

export function replyFor(verdict: Verdict): SmtpReply | null {
  if (verdict.action === 'tempfail') return REPLIES.scanTempfail;
  if (verdict.action !== 'reject') return null;
  const virus = /^virus (\S+) found/.exec(verdict.reason);
  if (virus) return virusFound(printable(virus[1], 100));
  if (verdict.reason.startsWith('spam')) return REPLIES.spam;
  if (verdict.reason.startsWith(STRUCTURE_REASON)) return structureRefused(printable(verdict.reason.slice(STRUCTURE_REASON.length)));
  if (verdict.reason.startsWith(UNSCANNABLE_REASON)) return notFullyScanned(printable(verdict.reason.slice(UNSCANNABLE_REASON.length), 120));
  const rule = /^(?:policy|auth) [^:]+: (.*)$/.exec(verdict.reason);
  return contentRefused(printable(rule ? rule[1] : verdict.reason));
}

/** Resolves (never rejects) with a timeout result when `signal` aborts. */
function onAbort(signal: AbortSignal): { promise: Promise<EngineResult>; dispose(): void } {
  let listener = () => undefined as void;
  const promise = new Promise<EngineResult>((resolve) => {
    listener = () => resolve(errorResult('timeout', 'deadline reached'));
    if (signal.aborted) listener();
    else signal.addEventListener('abort', listener, { once: true });
  });
  return { promise, dispose: () => signal.removeEventListener('abort', listener) };
}

/**
 * `suspect`: the message is past Ichidan's structure limits, so an engine failing on it tells
 * nothing about the engine; its breaker does not count the run (a sender could otherwise open it).
 */
export async function runEngine(entry: EngineEntry, message: ScanMessage, context: ScanContext, outer: AbortSignal, suspect = false): Promise<EngineRun> {
  const { name, shadow, weight, onError, maxSize, oversize, timeout } = entry.options;
  const base = { engine: name, kind: entry.engine.kind as EngineKind, shadow, weight, onError };
  if (message.size > maxSize) {
    // Not the engine's doing either: its breaker is not asked.
    if (oversize === 'skip') return { ...base, skipped: 'size', ms: 0, version: entry.engine.version() };
    return { ...base, result: unscannableResult(`a message of ${message.size} bytes is larger than its maxSize of ${maxSize}`), ms: 0, version: entry.engine.version() };
  }
  const admission = entry.health?.admit(Date.now()) ?? 'scan';
  if (admission === 'skip') return { ...base, skipped: 'disabled', ms: 0, version: entry.engine.version() };
  const deadline = AbortSignal.any([outer, AbortSignal.timeout(timeout)]);
  const guard = onAbort(deadline);
  const t0 = performance.now();
  const scanned = entry.engine.scan(message, context, deadline).catch((err: unknown) =>
    errorResult('protocol', `adapter failed: ${(err as Error)?.message ?? String(err)}`));
  let result = await Promise.race([scanned, guard.promise]);
  guard.dispose();
  if (entry.local && !outer.aborted && result.outcome.status === 'error' && result.outcome.error === 'timeout') {
    result = unscannableResult(`not judged within its timeout of ${timeout} ms`, result.detail);
  }
  // When the caller gave up (the DATA deadline), the engine is not to blame.
  if (outer.aborted || suspect) entry.health?.abandon(admission);
  else entry.health?.record(admission, result, Date.now());
  return { ...base, result, ms: performance.now() - t0, version: entry.engine.version() };
}

export class EngineRunner {
  readonly #byName: Map<string, EngineEntry>;

  constructor(
    readonly entries: EngineEntry[],
    private readonly scanning: ScanningConfig,
    private readonly tenants: Record<string, TenantScanningConfig | undefined>,
  ) {
    this.#byName = new Map(entries.map((e) => [e.options.name, e]));
  }

  #enginesOf(tenant: string): string[] {
    return this.tenants[tenant]?.engines ?? [...this.#byName.keys()];
  }

  #policyOf(tenant: string): VerdictPolicy {
    return tenantPolicy(this.scanning, this.tenants[tenant]);
  }

  /**
   * `structure` is what Ichidan's own structure check found wrong with the message (null: nothing).
   * When every tenant refuses such a message, the engines are not asked.
   */
  async scan(message: ScanMessage, context: ScanContext, signal: AbortSignal, structure: string | null = null): Promise<ScanDecision> {
    const t0 = performance.now();
    const tenants = context.tenants?.length ? [...new Set(context.tenants)] : ['_relay'];
    if (structure !== null && tenants.every((t) => this.#policyOf(t).unscannable === 'reject')) {
      const verdict = decide([], this.#policyOf(tenants[0]), structure);
      return { verdict, reply: replyFor(verdict), runs: [], late: null, ms: performance.now() - t0, overheadMs: 0 };
    }
    const wanted = new Set(tenants.flatMap((t) => this.#enginesOf(t)));
    const started = [...wanted].map((name) => {
      const entry = this.#byName.get(name)!;
      const run = { shadow: entry.options.shadow, result: null as EngineRun | null, promise: runEngine(entry, message, context, signal, structure !== null) };
      void run.promise.then((r) => { run.result = r; });
      return run;
    });
    // The verdict waits for the counted engines only; a shadow engine still running then is recorded when it ends.
    // A shadow run that ended before them has already set its result (its reaction ran first).
    await Promise.all(started.filter((r) => !r.shadow).map((r) => r.promise));
    const pending = started.filter((r) => r.result === null);
    const runs = started.filter((r) => r.result !== null).map((r) => r.result!);
    let verdict: Verdict | null = null;
    for (const tenant of tenants) {
      const mine = new Set(this.#enginesOf(tenant));
      const v = decide(runs.filter((r) => mine.has(r.engine)), this.#policyOf(tenant), structure);
      if (!verdict || stronger(v.action, verdict.action) !== verdict.action) verdict = v;
    }
    const ms = performance.now() - t0;
    const slowest = runs.reduce((m, r) => Math.max(m, r.ms), 0);
    const late = pending.length > 0 ? Promise.all(pending.map((r) => r.promise)) : null;
    return { verdict: verdict!, reply: replyFor(verdict!), runs, late, ms, overheadMs: Math.max(0, ms - slowest) };
  }

}
