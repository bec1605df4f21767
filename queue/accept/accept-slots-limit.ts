/*
 * How many unknown senders' scans may run at once: as many as the engines take without a queue of
 * their own.
 *
 * A scan slot bounds the messages Ichidan hands the engines, not the engines' own work: rspamd or
 * clamd take every request at once and share a few workers among them, so a known sender's message
 * sent alongside forty of a flood's waits inside the engine behind all forty, reserve or no reserve.
 * The limit reads that queue from the scans' own lengths, as a delay-based congestion control reads
 * round trips: the quickest scans of the last minute give the engines' speed with no queue, per
 * size class (a message up to 16 KB, then each doubling: the engines take longer over larger
 * mail, and a large message is no sign of a queue); a scan that took more than `tolerance` times
 * its class's speed waited inside them. Then the limit is cut in proportion (at most by half, once
 * per round: the scans in flight at a cut, and those that started before they all ended, queued
 * behind the same backlog and do not cut again); a scan within it, ended while unknown senders'
 * messages were held back by the limit itself, raises it by one. A scan of a size class with no
 * speed yet only teaches it.
 * It starts at the floor, so a flood's first messages reach the engines a few at a time while the
 * limit finds what they take, and never goes below it (nor above the slots unknown senders may
 * hold). Known senders' scans are not limited: they count only in the engines' speed.
 *
 * Takes: the floor and the tolerance (admission.unknownScans), the ceiling (the unreserved slots),
 *   each scan's start, length and message size, whether unknown scans were held back by the limit
 *   when it ended, and how many scans were still in flight then.
 * Gives: `value`, the unknown scans that may run now.
 */

export interface LimitSettings {
  /** Fewest unknown scans at once, whatever the engines' latency. */
  floor: number;
  /** A scan longer than this multiple of the quickest recent one of its size shows the engines queueing; 0: no limit but the ceiling. */
  tolerance: number;
}

/** One scan that has ended. */
export interface EndedScan {
  /** When it started and how long it took (ms). */
  start: number;
  ms: number;
  /** The message's size in bytes. */
  bytes: number;
  /** Unknown scans were waiting, held back by the limit itself, as it ended. */
  held: boolean;
  /** Scans (of either priority) still in flight once it ended. */
  inFlight: number;
}

/** How long the quickest scan is remembered for: one bucket's minimum per BUCKET_MS, BUCKETS of them. */
const BUCKET_MS = 5_000;
const BUCKETS = 12;
/** Size classes: up to SMALL bytes, then one per doubling, up to LARGEST_CLASS. */
const SMALL = 16 * 1024;
const LARGEST_CLASS = 10;

export function sizeClass(bytes: number): number {
  return bytes <= SMALL ? 0 : Math.min(LARGEST_CLASS, Math.ceil(Math.log2(bytes / SMALL)));
}

export class LatencyLimit {
  #limit: number;
  /** When the limit was last cut, the scans of that round still in flight, and when the round ended. */
  #cutAt = -Infinity;
  #roundLeft = 0;
  #roundEnd = -Infinity;
  /** The quickest scan per bucket, the current bucket last, per size class. */
  readonly #minima = new Map<number, { bucket: number; ms: number }[]>();

  constructor(private settings: LimitSettings, private ceiling: number, private readonly now: () => number = () => performance.now()) {
    this.#limit = settings.floor;
  }

  /** Unknown scans that may run at once now. */
  get value(): number {
    if (this.settings.tolerance === 0) return this.ceiling;
    return Math.max(1, Math.min(this.ceiling, Math.floor(this.#limit)));
  }

  /** The engines' speed with no queue for the smallest messages scanned in the last minute (ms), null before any. */
  get quickest(): number | null {
    const now = this.now();
    for (const cls of [...this.#minima.keys()].sort((a, b) => a - b)) {
      const speed = this.#speed(cls, now);
      if (speed !== null) return speed;
    }
    return null;
  }

  /** A reloaded config or a resized set of slots. */
  update(settings: LimitSettings, ceiling: number): void {
    this.settings = settings;
    this.ceiling = ceiling;
    this.#limit = Math.min(Math.max(this.#limit, settings.floor), Math.max(settings.floor, ceiling));
  }

  /** A slot given back without a scan (the message deferred or gone meanwhile): it ends its part of a round, and teaches nothing. */
  unscanned(start: number): void {
    this.#endOfRound(start, this.now());
  }

  /** A scan (of either priority) has ended. */
  scanned({ start, ms, bytes, held, inFlight }: EndedScan): void {
    const now = this.now();
    this.#endOfRound(start, now);
    // A scan measured at 0 ms (the clock's grain) would make every other one look queued.
    ms = Math.max(1, ms);
    const cls = sizeClass(bytes);
    const speed = this.#speed(cls, now);
    this.#remember(cls, ms, now);
    const { floor, tolerance } = this.settings;
    if (tolerance === 0 || speed === null) return;
    const allowed = tolerance * speed;
    if (ms > allowed) {
      // Queued behind the backlog an earlier cut answered for: that round is not over yet.
      if (this.#roundLeft > 0 || start < this.#roundEnd) return;
      this.#limit = Math.max(floor, this.#limit * Math.max(0.5, allowed / ms));
      this.#cutAt = now;
      this.#roundLeft = inFlight;
      this.#roundEnd = inFlight === 0 ? now : Infinity;
    } else if (held) {
      this.#limit = Math.min(Math.max(floor, this.ceiling), this.#limit + 1);
    }
  }

  /** One of the scans in flight at the last cut has ended: the round ends with the last of them. */
  #endOfRound(start: number, now: number): void {
    if (this.#roundLeft > 0 && start <= this.#cutAt && --this.#roundLeft === 0) this.#roundEnd = now;
  }

  /**
   * A size class's speed with no queue, null without a scan of it in the last minute: the lower
   * median of its quickest scan of each five seconds, so that one odd scan (an engine that
   * answered at once with an error) does not make every other look queued.
   */
  #speed(cls: number, now: number): number | null {
    const oldest = Math.floor(now / BUCKET_MS) - BUCKETS;
    const recent = (this.#minima.get(cls) ?? []).filter((m) => m.bucket > oldest).map((m) => m.ms);
    if (recent.length === 0) return null;
    recent.sort((a, b) => a - b);
    return recent[Math.floor((recent.length - 1) / 2)]!;
  }

  #remember(cls: number, ms: number, now: number): void {
    const bucket = Math.floor(now / BUCKET_MS);
    let minima = this.#minima.get(cls);
    if (!minima) this.#minima.set(cls, minima = []);
    const last = minima.at(-1);
    if (last?.bucket === bucket) last.ms = Math.min(last.ms, ms);
    else minima.push({ bucket, ms });
    while (minima.length > 0 && minima[0]!.bucket <= bucket - BUCKETS) minima.shift();
    if (minima.length === 0) this.#minima.delete(cls);
  }
}
