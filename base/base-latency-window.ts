/*
 * A rolling recorder of how long something took (a spool fsync, a scan's wait for a slot, a scan),
 * read as percentiles over the last stretch of time.
 *
 * Takes: durations in ms as they end (`record`), or a promise-returning operation to time (`time`,
 *   which also knows how long the operations still running have been going).
 * Gives: `percentile(q, windowMs)` over the samples that ended within the last `windowMs` (null
 *   when none did); `oldestRunningMs()`, the age of the longest operation not finished yet (a stuck
 *   fsync shows here before it ends); `onSample`, called with each duration (the metrics'
 *   histogram).
 * Memory: a fixed ring of `capacity` samples and one scratch array of the same size, made once:
 *   recording allocates nothing, and a burst past the capacity keeps the newest samples.
 */

export class LatencyWindow {
  readonly #values: Float64Array;
  readonly #ends: Float64Array;
  readonly #scratch: Float64Array;
  /** Where the next sample goes, and how many of the ring's slots hold one. */
  #next = 0;
  #filled = 0;
  /** Start times of the timed operations still running (as many as run at once). */
  readonly #running: number[] = [];

  /** Each duration as it is recorded (set by whoever exports it, e.g. a histogram). */
  onSample: ((ms: number) => void) | null = null;

  constructor(readonly capacity = 2048, private readonly now: () => number = () => performance.now()) {
    this.#values = new Float64Array(capacity);
    this.#ends = new Float64Array(capacity);
    this.#scratch = new Float64Array(capacity);
  }

  record(ms: number, endedAt = this.now()): void {
    this.#values[this.#next] = ms;
    this.#ends[this.#next] = endedAt;
    this.#next = (this.#next + 1) % this.capacity;
    if (this.#filled < this.capacity) this.#filled++;
    this.onSample?.(ms);
  }

  /** Runs `operation`, recording how long it took (also when it fails: a failing fsync is slow too). */
  async time<T>(operation: () => Promise<T>): Promise<T> {
    const start = this.now();
    this.#running.push(start);
    try {
      return await operation();
    } finally {
      this.#running.splice(this.#running.indexOf(start), 1);
      const end = this.now();
      this.record(end - start, end);
    }
  }

  /** The `q`-th percentile (0–100) of the samples that ended within the last `windowMs`; null when none did. */
  percentile(q: number, windowMs: number): number | null {
    const since = this.now() - windowMs;
    let n = 0;
    for (let i = 0; i < this.#filled; i++) {
      if (this.#ends[i] >= since) this.#scratch[n++] = this.#values[i];
    }
    if (n === 0) return null;
    const sorted = this.#scratch.subarray(0, n).sort();
    // Nearest rank: the smallest sample with at least q% of the samples at or below it.
    return sorted[Math.max(0, Math.ceil((q / 100) * n) - 1)];
  }

  /** How long the oldest operation still running has been going, ms; null when none is. */
  oldestRunningMs(): number | null {
    if (this.#running.length === 0) return null;
    let oldest = this.#running[0];
    for (const t of this.#running) if (t < oldest) oldest = t;
    return this.now() - oldest;
  }

  /** The percentile, or the oldest running operation's age when that is longer (a stuck one counts before it ends). */
  worst(q: number, windowMs: number): number | null {
    const p = this.percentile(q, windowMs);
    const running = this.oldestRunningMs();
    if (p === null) return running;
    return running === null ? p : Math.max(p, running);
  }
}
