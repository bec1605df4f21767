/*
 * The scheduler: which delivery job runs next.
 *
 * A job is one message's due recipients for one lane, a lane being (tenant, destination domain).
 * Jobs that are due wait in their lane's FIFO; jobs due later wait in one timer heap and move to
 * their lane when due. Dispatch goes round-robin over the lanes that have work, never past the
 * total concurrency nor a lane's own concurrency, so a lane whose destination is slow or down
 * holds at most its own share and every other lane keeps moving.
 */
export interface Job {
  messageId: string;
  tenant: string;
  domain: string;
  recipientIds: number[];
  due: number;
}

export interface SchedulerLimits {
  concurrency: number;
  laneConcurrency: number;
}

interface Lane {
  key: string;
  ready: Job[];
  head: number;
  active: number;
}

export function laneKey(tenant: string, domain: string): string {
  return `${tenant}\u0000${domain}`;
}

/** A binary min-heap of jobs by due time. */
class DueHeap {
  #items: Job[] = [];
  get size(): number { return this.#items.length; }
  peek(): Job | undefined { return this.#items[0]; }
  push(job: Job): void {
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
  pop(): Job | undefined {
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

export class Scheduler {
  readonly #lanes = new Map<string, Lane>();
  /** Lanes with ready jobs, visited in turn. */
  #ring: string[] = [];
  #ringPos = 0;
  readonly #later = new DueHeap();
  #active = 0;
  #timer: NodeJS.Timeout | null = null;
  #timerAt = Infinity;
  #stopped = false;

  constructor(
    private limits: SchedulerLimits,
    private readonly run: (job: Job) => Promise<void>,
    private readonly now: () => number = Date.now,
  ) {}

  get active(): number { return this.#active; }
  get waiting(): number {
    let n = this.#later.size;
    for (const lane of this.#lanes.values()) n += lane.ready.length - lane.head;
    return n;
  }

  setLimits(limits: SchedulerLimits): void {
    this.limits = limits;
    this.#pump();
  }

  add(job: Job): void {
    if (job.due <= this.now()) this.#makeReady(job);
    else this.#later.push(job);
    this.#pump();
  }

  stop(): void {
    this.#stopped = true;
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = null;
  }

  #makeReady(job: Job): void {
    const key = laneKey(job.tenant, job.domain);
    let lane = this.#lanes.get(key);
    if (!lane) {
      lane = { key, ready: [], head: 0, active: 0 };
      this.#lanes.set(key, lane);
    }
    if (lane.ready.length === lane.head) this.#ring.push(key);
    lane.ready.push(job);
  }

  #promoteDue(): void {
    const now = this.now();
    while (this.#later.size > 0 && this.#later.peek()!.due <= now) this.#makeReady(this.#later.pop()!);
  }

  #pump(): void {
    if (this.#stopped) return;
    this.#promoteDue();
    let idleVisits = 0;
    while (this.#active < this.limits.concurrency && this.#ring.length > 0 && idleVisits < this.#ring.length) {
      if (this.#ringPos >= this.#ring.length) this.#ringPos = 0;
      const key = this.#ring[this.#ringPos];
      const lane = this.#lanes.get(key)!;
      if (lane.active >= this.limits.laneConcurrency) {
        this.#ringPos++;
        idleVisits++;
        continue;
      }
      idleVisits = 0;
      const job = lane.ready[lane.head++];
      if (lane.head === lane.ready.length) {
        lane.ready = [];
        lane.head = 0;
        this.#ring.splice(this.#ringPos, 1);
      } else {
        this.#ringPos++;
      }
      this.#start(lane, job);
    }
    this.#armTimer();
  }

  #start(lane: Lane, job: Job): void {
    this.#active++;
    lane.active++;
    this.run(job).catch(() => undefined).finally(() => {
      this.#active--;
      lane.active--;
      if (lane.active === 0 && lane.ready.length === lane.head) this.#lanes.delete(lane.key);
      this.#pump();
    });
  }

  #armTimer(): void {
    const next = this.#later.peek();
    if (!next) return;
    if (this.#timer && this.#timerAt <= next.due) return;
    if (this.#timer) clearTimeout(this.#timer);
    this.#timerAt = next.due;
    this.#timer = setTimeout(() => {
      this.#timer = null;
      this.#timerAt = Infinity;
      this.#pump();
    }, Math.min(Math.max(0, next.due - this.now()), 2 ** 31 - 1));
    this.#timer.unref();
  }
}
