/*
 * Scan slots: how many messages the engines read at once, with a share kept for known senders.
 *
 * A message takes a slot before its scan and gives it back after. A known sender's message takes
 * any free slot; an unknown sender's only while more than the reserve stays free and fewer unknown
 * scans run than the engines take without queueing (accept-slots-limit.ts), so a flood of unknown
 * mail never leaves known senders waiting behind it, here or inside the engines. Waiting messages
 * are served known ones first, each group in arrival order; a wait ends with the caller's signal
 * (the DATA deadline), and then the message is not scanned at all.
 *
 * Takes: the capacity and the reserved share (admission.scans, admission.reserve.scans), the
 *   unknown scans' limit settings (admission.unknownScans), each scan's priority and abort signal.
 * Gives: `take` (the slot's release), `waiting` counts, and each wait's and each scan's length to
 *   the observer (the pressure signals read them).
 */

import { LatencyLimit, type LimitSettings } from './accept-slots-limit.js';

export type ScanPriority = 'known' | 'unknown';

/** What the slots report: each wait for a slot and each scan, in milliseconds. */
export interface SlotObserver {
  waited(ms: number, priority: ScanPriority): void;
  scanned(ms: number): void;
}

interface Waiter {
  priority: ScanPriority;
  since: number;
  grant: () => void;
}

export interface ScanSlotsStatus {
  capacity: number;
  reserved: number;
  inUse: number;
  waiting: { known: number; unknown: number };
  /** Unknown senders' scans running, how many may run at once now, and the engines' speed it follows (null before any scan). */
  unknown: { inUse: number; limit: number; quickestMs: number | null };
}

/** Gives a slot back; `scanned: false` when no scan ran in it. */
export type SlotRelease = (scanned?: boolean) => void;

/** No limit on unknown scans but the unreserved slots. */
const UNLIMITED: LimitSettings = { floor: 1, tolerance: 0 };

export class ScanSlots {
  #inUse = 0;
  #unknownInUse = 0;
  readonly #queues: Record<ScanPriority, Waiter[]> = { known: [], unknown: [] };
  readonly #limit: LatencyLimit;

  constructor(
    private capacity: number, private reserveShare: number, private readonly observer?: SlotObserver,
    limit: LimitSettings = UNLIMITED, private readonly now: () => number = () => performance.now(),
  ) {
    this.#limit = new LatencyLimit(limit, capacity - this.reserved, now);
  }

  /** Slots unknown senders may not take. */
  get reserved(): number {
    return Math.min(this.capacity - 1, Math.ceil(this.capacity * this.reserveShare));
  }

  get inUse(): number {
    return this.#inUse;
  }

  /** The slots as they stand: for `ichidan admission status` and the metrics. */
  status(): ScanSlotsStatus {
    return {
      capacity: this.capacity, reserved: this.reserved, inUse: this.#inUse, waiting: this.waiting,
      unknown: { inUse: this.#unknownInUse, limit: this.#limit.value, quickestMs: this.#limit.quickest },
    };
  }

  get waiting(): { known: number; unknown: number } {
    return { known: this.#queues.known.length, unknown: this.#queues.unknown.length };
  }

  /** A reloaded config: more slots are handed out at once, fewer as scans end. */
  resize(capacity: number, reserveShare: number, limit: LimitSettings = UNLIMITED): void {
    this.capacity = capacity;
    this.reserveShare = reserveShare;
    this.#limit.update(limit, capacity - this.reserved);
    this.#drain();
  }

  /**
   * Resolves with the slot's release once one is free for `priority`; rejects with the signal's
   * reason if it aborts first (the message then goes unscanned and the caller refuses it). `bytes`
   * is the message's size (the engines' speed is learned per size). The release is called with
   * `false` when the slot is given back without a scan: nothing is learned from it.
   */
  take(priority: ScanPriority, signal?: AbortSignal, bytes = 0): Promise<SlotRelease> {
    const since = this.now();
    if (this.#free(priority) && this.#queues.known.length === 0 && (priority === 'known' || this.#queues.unknown.length === 0)) {
      this.#hold(priority);
      this.observer?.waited(0, priority);
      return Promise.resolve(this.#release(since, priority, bytes));
    }
    signal?.throwIfAborted();
    return new Promise((resolve, reject) => {
      const waiter: Waiter = {
        priority, since,
        grant: () => {
          signal?.removeEventListener('abort', onAbort);
          this.observer?.waited(this.now() - since, priority);
          resolve(this.#release(this.now(), priority, bytes));
        },
      };
      const onAbort = () => {
        const queue = this.#queues[priority];
        const at = queue.indexOf(waiter);
        if (at >= 0) queue.splice(at, 1);
        reject(signal!.reason);
      };
      signal?.addEventListener('abort', onAbort, { once: true });
      this.#queues[priority].push(waiter);
    });
  }

  #free(priority: ScanPriority): boolean {
    if (priority === 'known') return this.#inUse < this.capacity;
    return this.#inUse < this.capacity - this.reserved && this.#unknownInUse < this.#limit.value;
  }

  #hold(priority: ScanPriority): void {
    this.#inUse++;
    if (priority === 'unknown') this.#unknownInUse++;
  }

  /** The function that gives a slot back (once), started at `start` for the scan's length. */
  #release(start: number, priority: ScanPriority, bytes: number): SlotRelease {
    let done = false;
    return (scanned = true) => {
      if (done) return;
      done = true;
      // Unknown messages held back by the limit itself: it was reached while they waited.
      const held = this.#queues.unknown.length > 0 && this.#unknownInUse >= this.#limit.value;
      this.#inUse--;
      if (priority === 'unknown') this.#unknownInUse--;
      if (scanned) {
        const ms = this.now() - start;
        this.observer?.scanned(ms);
        this.#limit.scanned({ start, ms, bytes, held, inFlight: this.#inUse });
      } else {
        this.#limit.unscanned(start);
      }
      this.#drain();
    };
  }

  /** Hands free slots to waiters: known ones first, unknown ones only past the reserve. */
  #drain(): void {
    for (const priority of ['known', 'unknown'] as const) {
      const queue = this.#queues[priority];
      while (queue.length > 0 && this.#free(priority)) {
        this.#hold(priority);
        queue.shift()!.grant();
      }
    }
  }
}
