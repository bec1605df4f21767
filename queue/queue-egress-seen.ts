/*
 * What the deliveries to one site showed lately (egress control's local evidence for
 * attribution, queue-egress-control.ts): the signals of the throttle window, oldest first, at
 * most `max` of them.
 *
 * Every delivery adds one and the oldest fall out, so adding must not cost the length of the
 * window: entries that fall out only move a start index, and the array is compacted once the
 * dropped part is as long as the kept part (constant time per entry, amortized). Removing them
 * one by one from the front of an array (splice) made each delivery to a busy site copy up to
 * the whole window.
 * Takes entries in time order (a clock that never goes back). Network: none.
 */
export interface Seen {
  at: number;
  tenant: string;
  throttled: boolean;
}

/** Dropped entries are kept in the array until there are at least this many (small windows are not compacted at every step). */
const COMPACT_AT = 1024;

export class SeenWindow {
  #items: Seen[] = [];
  #head = 0;

  constructor(private readonly max: number) {}

  get length(): number {
    return this.#items.length - this.#head;
  }

  /** The newest entry's time (undefined when none is kept). */
  get lastAt(): number | undefined {
    return this.length > 0 ? this.#items[this.#items.length - 1].at : undefined;
  }

  /** Adds `seen`, then lets go of what is older than `since` and what is past the `max` newest. */
  add(seen: Seen, since: number): void {
    const items = this.#items;
    items.push(seen);
    let head = this.#head;
    while (head < items.length && (items[head].at < since || items.length - head > this.max)) head++;
    this.#head = head;
    if (head >= COMPACT_AT && head * 2 >= items.length) {
      this.#items = items.slice(head);
      this.#head = 0;
    }
  }

  *[Symbol.iterator](): Iterator<Seen> {
    for (let i = this.#head; i < this.#items.length; i++) yield this.#items[i];
  }
}
