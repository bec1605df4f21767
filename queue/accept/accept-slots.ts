/*
 * Scan slots: how many messages the engines read at once, with a share kept for known senders.
 *
 * A message takes a slot before its scan and gives it back after. A known sender's message takes
 * any free slot; an unknown sender's only while more than the reserve stays free, so a flood of
 * unknown mail never leaves known senders waiting behind it. Waiting messages are served known
 * ones first, each group in arrival order; a wait ends with the caller's signal (the DATA
 * deadline), and then the message is not scanned at all.
 *
 * Takes: the capacity and the reserved share (admission.scans, admission.reserve.scans), each
 *   scan's priority and abort signal.
 * Gives: `take` (the slot's release), `waiting` counts, and each wait's and each scan's length to
 *   the observer (the pressure signals read them).
 */

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

export class ScanSlots {
  #inUse = 0;
  readonly #queues: Record<ScanPriority, Waiter[]> = { known: [], unknown: [] };

  constructor(private capacity: number, private reserveShare: number, private readonly observer?: SlotObserver) {}

  /** Slots unknown senders may not take. */
  get reserved(): number {
    return Math.min(this.capacity - 1, Math.ceil(this.capacity * this.reserveShare));
  }

  get inUse(): number {
    return this.#inUse;
  }

  get waiting(): { known: number; unknown: number } {
    return { known: this.#queues.known.length, unknown: this.#queues.unknown.length };
  }

  /** A reloaded config: more slots are handed out at once, fewer as scans end. */
  resize(capacity: number, reserveShare: number): void {
    this.capacity = capacity;
    this.reserveShare = reserveShare;
    this.#drain();
  }

  /**
   * Resolves with the slot's release once one is free for `priority`; rejects with the signal's
   * reason if it aborts first (the message then goes unscanned and the caller refuses it).
   */
  take(priority: ScanPriority, signal?: AbortSignal): Promise<() => void> {
    const since = Date.now();
    if (this.#free(priority) && this.#queues.known.length === 0 && (priority === 'known' || this.#queues.unknown.length === 0)) {
      this.#inUse++;
      this.observer?.waited(0, priority);
      return Promise.resolve(this.#release(since));
    }
    signal?.throwIfAborted();
    return new Promise((resolve, reject) => {
      const waiter: Waiter = {
        priority, since,
        grant: () => {
          signal?.removeEventListener('abort', onAbort);
          this.observer?.waited(Date.now() - since, priority);
          resolve(this.#release(Date.now()));
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
    const limit = priority === 'known' ? this.capacity : this.capacity - this.reserved;
    return this.#inUse < limit;
  }

  /** The function that gives a slot back (once), started at `start` for the scan's length. */
  #release(start: number): () => void {
    let done = false;
    return () => {
      if (done) return;
      done = true;
      this.#inUse--;
      this.observer?.scanned(Date.now() - start);
      this.#drain();
    };
  }

  /** Hands free slots to waiters: known ones first, unknown ones only past the reserve. */
  #drain(): void {
    for (const priority of ['known', 'unknown'] as const) {
      const queue = this.#queues[priority];
      while (queue.length > 0 && this.#free(priority)) {
        this.#inUse++;
        queue.shift()!.grant();
      }
    }
  }
}
