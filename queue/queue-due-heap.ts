/*
 * The jobs not yet due, in a binary min-heap by due time: the scheduler takes them out as their
 * time comes and arms one timer for the earliest.
 */
/** Anything with a due time (ms since the epoch). */
export interface Due { readonly due: number }

export class DueHeap<T extends Due> {
  #items: T[] = [];
  get size(): number { return this.#items.length; }
  peek(): T | undefined { return this.#items[0]; }
  push(job: T): void {
    const a = this.#items;
    a.push(job);
    let i = a.length - 1;
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (a[p].due <= a[i].due) break;
      [a[p], a[i]] = [a[i], a[p]];
      i = p;
    }
  }
  pop(): T | undefined {
    const a = this.#items;
    const top = a[0];
    const last = a.pop();
    if (a.length > 0 && last) {
      a[0] = last;
      let i = 0;
      for (;;) {
        const l = 2 * i + 1, r = l + 1;
        let m = i;
        if (l < a.length && a[l].due < a[m].due) m = l;
        if (r < a.length && a[r].due < a[m].due) m = r;
        if (m === i) break;
        [a[m], a[i]] = [a[i], a[m]];
        i = m;
      }
    }
    return top;
  }
}
