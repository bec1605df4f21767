/*
 * How many unknown senders' scans may run at once: as many as the engines take without a queue of
 * their own.
 *
 * A scan slot bounds the messages Ichidan hands the engines, not the engines' own work: rspamd or
 * clamd take every request at once and share a few workers among them, so a known sender's message
 * sent alongside forty of a flood's waits inside the engine behind all forty, reserve or no reserve.
 * The limit reads that queue from the scans' own lengths, as a delay-based congestion control reads
 * round trips: the quickest scans of the last minute give the engines' speed with no queue; a scan
 * that took more than `tolerance` times it waited inside them. Then the limit is cut in proportion
 * (at most by half, once per round: scans started before the last cut do not cut again); a scan
 * within it, ended while unknown senders' messages were waiting for the limit, raises it by one.
 * It starts at the floor, so a flood's first messages reach the engines a few at a time while the
 * limit finds what they take, and never goes below it (nor above the slots unknown senders may
 * hold). Known senders' scans are not limited: they count only in the engines' speed.
 *
 * Takes: the floor and the tolerance (admission.unknownScans), the ceiling (the unreserved slots),
 *   each scan's start and length, and whether unknown scans were held back when it ended.
 * Gives: `value`, the unknown scans that may run now.
 */

export interface LimitSettings {
  /** Fewest unknown scans at once, whatever the engines' latency. */
  floor: number;
  /** A scan longer than this multiple of the quickest recent one shows the engines queueing; 0: no limit but the ceiling. */
  tolerance: number;
}

/** How long the quickest scan is remembered for: one bucket's minimum per BUCKET_MS, BUCKETS of them. */
const BUCKET_MS = 5_000;
const BUCKETS = 12;

export class LatencyLimit {
  #limit: number;
  #cutAt = -Infinity;
  /** The quickest scan per bucket, the current bucket last. */
  readonly #minima: { bucket: number; ms: number }[] = [];

  constructor(private settings: LimitSettings, private ceiling: number, private readonly now: () => number = Date.now) {
    this.#limit = settings.floor;
  }

  /** Unknown scans that may run at once now. */
  get value(): number {
    if (this.settings.tolerance === 0) return this.ceiling;
    return Math.max(1, Math.min(this.ceiling, Math.floor(this.#limit)));
  }

  /**
   * The engines' speed with no queue, null before any scan: the lower median of the quickest scan
   * of each five seconds in the last minute, so that one odd scan (a tiny message, an engine that
   * answered at once with an error) does not make every other look queued.
   */
  get quickest(): number | null {
    if (this.#minima.length === 0) return null;
    const sorted = this.#minima.map((m) => m.ms).sort((a, b) => a - b);
    return sorted[Math.floor((sorted.length - 1) / 2)]!;
  }

  /** A reloaded config or a resized set of slots. */
  update(settings: LimitSettings, ceiling: number): void {
    this.settings = settings;
    this.ceiling = ceiling;
    this.#limit = Math.min(Math.max(this.#limit, settings.floor), Math.max(settings.floor, ceiling));
  }

  /**
   * A scan (of either priority) that started at `start` has ended after `ms`; `held` says whether
   * unknown scans were waiting for the limit as it ended.
   */
  scanned(start: number, ms: number, held: boolean): void {
    // A scan measured at 0 ms (the clock's grain) would make every other one look queued.
    ms = Math.max(1, ms);
    this.#remember(ms);
    const { floor, tolerance } = this.settings;
    if (tolerance === 0) return;
    const allowed = tolerance * this.quickest!;
    if (ms > allowed) {
      if (start < this.#cutAt) return;
      this.#limit = Math.max(floor, this.#limit * Math.max(0.5, allowed / ms));
      this.#cutAt = this.now();
    } else if (held) {
      this.#limit = Math.min(Math.max(floor, this.ceiling), this.#limit + 1);
    }
  }

  #remember(ms: number): void {
    const bucket = Math.floor(this.now() / BUCKET_MS);
    const last = this.#minima.at(-1);
    if (last?.bucket === bucket) last.ms = Math.min(last.ms, ms);
    else this.#minima.push({ bucket, ms });
    while (this.#minima.length > 0 && this.#minima[0]!.bucket <= bucket - BUCKETS) this.#minima.shift();
  }
}
