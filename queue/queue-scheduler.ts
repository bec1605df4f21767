/*
 * The scheduler: which delivery job runs next, from which source address.
 *
 * A job is one message's due recipients for one lane, a lane being (tenant, destination domain).
 * Jobs due later wait in one timer heap. A job that comes due is placed under its destination
 * site (domains grouped by their mail hosts, as the egress names them), then under its tenant
 * within that site, then in its lane's FIFO:
 *
 *   site ─▶ tenants with mail for it (deficit round robin, weighted) ─▶ that tenant's lanes (in turn)
 *
 * A site's capacity is counted per (site, source address) pair — what a destination's
 * per-client limits see: at most `window` deliveries in flight, where the window starts at the
 * site's `initialConnections` and grows with successes up to `maxConnections` (Postfix's slow
 * start), shrinks on trouble, and can be paused. An optional message rate per pair is a token
 * bucket. Sites are served in turn, one job per visit, and each site hands its next slot to the
 * tenant whose turn it is, so tenants sending to one destination share it by their weights and
 * a site that is full or paused holds no slot that another site could use: a tarpit stalls only
 * the lanes that go there.
 *
 * In a cluster, a shared gate (`SharedGate`, queue/cluster/cluster-gate.ts) also has its say
 * before a start: the node must hold a lease for (site, source, tenant) in Redis, and the shared
 * message rates must allow one more; it wakes the scheduler when its answer may have changed.
 *
 * Also enforced here: total concurrency, per-lane concurrency, per-tenant concurrency and hourly
 * message caps, and blocks (holds and suspensions) on a tenant, a site, a tenant at a site, or a
 * pair (queue-blocks.ts); the pairs' windows and buckets are kept in queue-pairs.ts, the jobs not
 * yet due in queue-due-heap.ts. Blocks with an end time lift by themselves. Nothing here talks to
 * the network: the site of a domain comes from `resolveSite`, and what happened on the wire comes
 * back as `feedback`.
 */
import type { SiteCapacity, SiteRef, Source } from '../base/base-site.js';
import { Blocks, type Block } from './queue-blocks.js';
import { DueHeap } from './queue-due-heap.js';
import { Pairs, refill, type Feedback, type Pair, type PairView } from './queue-pairs.js';

export type { Block } from './queue-blocks.js';
export type { Feedback, PairView } from './queue-pairs.js';
export type { SiteCapacity, SiteRef, Source } from '../base/base-site.js';

export interface Job {
  messageId: string;
  tenant: string;
  domain: string;
  recipientIds: number[];
  due: number;
  /**
   * A live session's turn (the transparent proxy): run instead of the queue's delivery, it holds
   * its slot at `site` until the promise it returns settles.
   */
  live?: { site: SiteRef; run: (dispatch: Dispatch) => Promise<void>; cancelled: () => boolean };
}

export interface SchedulerLimits {
  concurrency: number;
  laneConcurrency: number;
}


export interface TenantPolicy {
  weight: number;
  concurrency?: number;
  messagesPerHour?: number;
  /** Kept queued, not delivered (the config's own suspension). */
  suspended?: boolean;
  /** At least one. */
  sources: Source[];
}

/** What a job is run with: the site it was counted against and the source address chosen for it. */
export interface Dispatch {
  job: Job;
  site: string;
  source: Source;
}

/**
 * What other nodes of a cluster hold (queue/cluster/cluster-gate.ts): connection leases per
 * (site, source, tenant) and shared message rates. Asked synchronously; when it says no, it asks
 * the cluster and calls the scheduler's `wake()` once the answer may have changed.
 */
export interface SharedGate {
  /** May `tenant` start one more delivery on (site, source), up to `cap` in flight cluster-wide? */
  may(site: string, source: string, tenant: string, weight: number, cap: number): boolean;
  /** Takes one message of a shared rate (`key` names it); false: not now. */
  rate(key: string, rate: { count: number; perMs: number }): boolean;
  started(site: string, source: string, tenant: string): void;
  finished(site: string, source: string, tenant: string): void;
}

export interface SchedulerDeps {
  run(dispatch: Dispatch): Promise<void>;
  /** Limits shared with other nodes; absent: this node's own counts are the whole truth. */
  gate?: SharedGate;
  /** The site of a destination domain; may answer at once (cached) or later (a lookup). */
  resolveSite(domain: string): SiteRef | Promise<SiteRef>;
  tenantPolicy(tenant: string): TenantPolicy;
  now?: () => number;
}

interface Lane {
  domain: string;
  ready: Job[];
  head: number;
  active: number;
}

interface SiteTenant {
  tenant: string;
  lanes: Map<string, Lane>;
  /** Domains of lanes with ready jobs, visited in turn. */
  ring: string[];
  pos: number;
  deficit: number;
}

interface Site {
  key: string;
  limits: SiteCapacity;
  tenants: Map<string, SiteTenant>;
  /** Tenants with ready jobs here, visited in turn. */
  ring: string[];
  pos: number;
  active: number;
}

interface TenantState {
  active: number;
  tokens: number;
  refilledAt: number;
}

export function laneKey(tenant: string, domain: string): string {
  return `${tenant}\u0000${domain}`;
}

const HOUR_MS = 3_600_000;

/** Why a visit could not start a job: never, or not before `until`. */
type Wait = { until: number };
const NEVER: Wait = { until: Infinity };

export class Scheduler {
  readonly #sites = new Map<string, Site>();
  /** Sites with ready jobs, visited in turn. */
  #ring: string[] = [];
  #ringPos = 0;
  readonly #pairs = new Pairs();
  readonly #tenants = new Map<string, TenantState>();
  readonly #blocks = new Blocks();
  /** Jobs whose domain's site is being looked up. */
  readonly #resolving = new Map<string, Job[]>();
  readonly #later = new DueHeap<Job>();
  #active = 0;
  #timer: NodeJS.Timeout | null = null;
  #timerAt = Infinity;
  #stopped = false;
  #pumping = false;
  readonly #now: () => number;

  constructor(private limits: SchedulerLimits, private readonly deps: SchedulerDeps) {
    this.#now = deps.now ?? Date.now;
  }

  get active(): number { return this.#active; }
  get waiting(): number {
    let n = this.#later.size;
    for (const jobs of this.#resolving.values()) n += jobs.length;
    for (const site of this.#sites.values()) {
      for (const st of site.tenants.values()) for (const lane of st.lanes.values()) n += lane.ready.length - lane.head;
    }
    return n;
  }

  setLimits(limits: SchedulerLimits): void {
    this.limits = limits;
    this.#pump();
  }

  /** New limits for a known site (after a config reload); its learned window is kept within them. */
  updateSite(ref: SiteRef): void {
    const site = this.#sites.get(ref.key);
    if (site) site.limits = ref.limits;
    this.#pairs.limit(ref.key, ref.limits);
    this.#pump();
  }

  /** The site keys jobs are currently placed under (for operator commands by site). */
  knownSites(): string[] {
    return [...this.#sites.keys()];
  }

  add(job: Job): void {
    if (job.due <= this.#now()) this.#makeReady(job);
    else this.#later.push(job);
    this.#pump();
  }

  stop(): void {
    this.#stopped = true;
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = null;
  }

  /** Adds or replaces a block; returns nothing, lifts by `unblock(id)` or by its end time. */
  block(block: Block): void {
    this.#blocks.set(block);
    this.#pump();
  }

  unblock(id: string): boolean {
    const had = this.#blocks.delete(id);
    if (had) this.#pump();
    return had;
  }

  blocks(): Block[] {
    return this.#blocks.list(this.#now());
  }

  /**
   * What a delivery on (site, source) showed: success grows the window by 1/window while it is
   * in full use (one more connection per window's worth of successes); a slow reply takes one
   * off; a throttle halves it. Never below 1 nor above the site's maximum.
   */
  feedback(site: string, source: string | null, kind: Feedback): void {
    this.#pairs.feedback(site, source, kind, this.#now());
  }

  /**
   * The destination refused one more connection of the pair at its banner, `open` being open:
   * its window holds below that (queue-pairs.ts), no pause. Returns the cap now in force.
   */
  cap(site: string, source: string | null, open: number, probeMs: number): number | undefined {
    return this.#pairs.cap(site, source, open, probeMs, this.#now());
  }

  /** Connections the pair may have open, when a learnt cap is below the site's maxConnections. */
  connections(site: string, source: string | null): number | undefined {
    return this.#pairs.connections(site, source);
  }

  /** The pair's current window (undefined: not known yet). */
  window(site: string, source: string | null): number | undefined {
    return this.#pairs.get(site, source)?.window;
  }

  /** Puts a pair's window back (an operator undoing a reduction), within the site's maximum. */
  setWindow(site: string, source: string | null, window: number): void {
    this.#pairs.setWindow(site, source, window);
    this.#pump();
  }

  pairs(): PairView[] {
    return this.#pairs.views();
  }

  #makeReady(job: Job): void {
    if (job.live) {
      this.#place(job.live.site, job);
      return;
    }
    const pending = this.#resolving.get(job.domain);
    if (pending) {
      pending.push(job);
      return;
    }
    let found: SiteRef | Promise<SiteRef>;
    try {
      found = this.deps.resolveSite(job.domain);
    } catch {
      found = fallbackSite(job.domain);
    }
    if (!(found instanceof Promise)) {
      this.#place(found, job);
      return;
    }
    const jobs = [job];
    this.#resolving.set(job.domain, jobs);
    found.catch(() => fallbackSite(job.domain)).then((ref) => {
      this.#resolving.delete(job.domain);
      for (const j of jobs) this.#place(ref, j);
      this.#pump();
    });
  }

  #place(ref: SiteRef, job: Job): void {
    let site = this.#sites.get(ref.key);
    if (!site) {
      site = { key: ref.key, limits: ref.limits, tenants: new Map(), ring: [], pos: 0, active: 0 };
      this.#sites.set(ref.key, site);
    }
    let st = site.tenants.get(job.tenant);
    if (!st) {
      st = { tenant: job.tenant, lanes: new Map(), ring: [], pos: 0, deficit: 0 };
      site.tenants.set(job.tenant, st);
    }
    let lane = st.lanes.get(job.domain);
    if (!lane) {
      lane = { domain: job.domain, ready: [], head: 0, active: 0 };
      st.lanes.set(job.domain, lane);
    }
    if (lane.ready.length === lane.head) {
      if (st.ring.length === 0) {
        if (site.ring.length === 0) this.#ring.push(site.key);
        site.ring.push(st.tenant);
      }
      st.ring.push(lane.domain);
    }
    lane.ready.push(job);
  }

  #promoteDue(): void {
    const now = this.#now();
    while (this.#later.size > 0 && this.#later.peek()!.due <= now) this.#makeReady(this.#later.pop()!);
  }

  #pump(): void {
    if (this.#stopped || this.#pumping) return;
    this.#pumping = true;
    try {
      this.#promoteDue();
      const now = this.#now();
      this.#expireBlocks(now);
      let wake = Infinity;
      let idleVisits = 0;
      while (this.#active < this.limits.concurrency && this.#ring.length > 0 && idleVisits < this.#ring.length) {
        if (this.#ringPos >= this.#ring.length) this.#ringPos = 0;
        const site = this.#sites.get(this.#ring[this.#ringPos])!;
        const outcome = this.#visit(site, now);
        if (outcome === 'started') {
          idleVisits = 0;
          if (site.ring.length === 0) this.#ring.splice(this.#ringPos, 1);
          else this.#ringPos++;
        } else {
          wake = Math.min(wake, outcome.until);
          idleVisits++;
          this.#ringPos++;
        }
      }
      this.#armTimer(wake);
    } finally {
      this.#pumping = false;
    }
  }

  /** Starts one job at this site if any tenant whose turn it is may send now. */
  #visit(site: Site, now: number): 'started' | Wait {
    const siteBlock = this.#blockedUntil(now, undefined, site.key);
    if (siteBlock > now) return { until: siteBlock };
    let wake = Infinity;
    // A tenant whose weight is below 1 waits some rounds for its deficit to reach one job; the
    // rounds repeat (weights are at least 0.01) while such waiting is all that stops every tenant.
    for (let round = 0; round <= 100; round++) {
      let waitedForDeficit = false;
      for (let tried = 0; tried < site.ring.length; tried++) {
        if (site.pos >= site.ring.length) site.pos = 0;
        const st = site.tenants.get(site.ring[site.pos])!;
        const policy = this.deps.tenantPolicy(st.tenant);
        const can = this.#tenantMay(st, site, policy, now);
        if (can !== true) {
          wake = Math.min(wake, can.until);
          site.pos++;
          continue;
        }
        // Only a tenant that could send now earns its quantum: a full or paused site earns no one credit.
        const source = this.#chooseSource(site, st.tenant, policy, now);
        if ('until' in source) {
          wake = Math.min(wake, source.until);
          site.pos++;
          continue;
        }
        if (st.deficit < 1) st.deficit += policy.weight;
        if (st.deficit < 1) {
          waitedForDeficit = true;
          site.pos++;
          continue;
        }
        const lane = this.#nextLane(st);
        if (!lane) {
          site.pos++;
          continue;
        }
        // Live turns whose session already gave up are dropped; the last one still runs, at no cost.
        let job = lane.ready[lane.head++];
        while (job.live?.cancelled() && lane.head < lane.ready.length) job = lane.ready[lane.head++];
        if (lane.head === lane.ready.length) {
          lane.ready = [];
          lane.head = 0;
          st.ring.splice(st.ring.indexOf(lane.domain), 1);
        }
        st.deficit -= 1;
        if (st.ring.length === 0) {
          st.deficit = 0;
          site.ring.splice(site.pos, 1);
        } else if (st.deficit < 1) {
          site.pos++;
        }
        this.#start(site, st, lane, source.pair, source.source, job, policy, now);
        return 'started';
      }
      if (!waitedForDeficit) break;
    }
    return { until: wake };
  }

  /**
   * May a live session already holding its turn start another transaction now? The blocks in force
   * and the message rates (the pair's, the tenant's hourly cap) are checked and one token taken,
   * as a delivery would. Returns null, or why not.
   */
  admit(site: string, source: string | null, tenant: string): string | null {
    const now = this.#now();
    this.#expireBlocks(now);
    if (this.#blockedUntil(now, undefined, site) > now || this.#blockedUntil(now, tenant, site) > now) return `held or suspended at ${site}`;
    if (this.#blockedUntil(now, undefined, site, source ?? '') > now) return `${site} is paused for ${source ?? 'the default source'}`;
    const policy = this.deps.tenantPolicy(tenant);
    if (policy.suspended) return `tenant ${tenant} is suspended`;
    const pair = this.#pairs.get(site, source);
    if (pair?.rate) {
      refill(pair, now);
      if (pair.tokens < 1) return `the message rate of ${site} is reached`;
    }
    const state = this.#tenant(tenant, policy, now);
    if (policy.messagesPerHour !== undefined && state.tokens < 1) return `tenant ${tenant} reached its messages per hour`;
    const gate = this.deps.gate;
    if (gate && !this.#sharedRates(gate, site, source ?? '', tenant, pair?.rate, policy)) return `a shared message rate of ${site} or of tenant ${tenant} is reached`;
    if (pair?.rate) pair.tokens -= 1;
    if (policy.messagesPerHour !== undefined) state.tokens -= 1;
    return null;
  }

  #tenantMay(st: SiteTenant, site: Site, policy: TenantPolicy, now: number): true | Wait {
    const blocked = this.#blockedUntil(now, st.tenant, site.key);
    if (blocked > now) return { until: blocked };
    if (policy.suspended) return NEVER;
    const state = this.#tenant(st.tenant, policy, now);
    if (policy.concurrency !== undefined && state.active >= policy.concurrency) return NEVER;
    if (policy.messagesPerHour !== undefined && state.tokens < 1) {
      return { until: now + Math.ceil((1 - state.tokens) * HOUR_MS / policy.messagesPerHour) };
    }
    return true;
  }

  /** The shared rates a start takes (the pair's message rate, the tenant's hourly cap); false when one says not now (it wakes us). */
  #sharedRates(gate: SharedGate, site: string, source: string, tenant: string, pairRate: Pair['rate'], policy: TenantPolicy): boolean {
    if (pairRate && !gate.rate(`site\u0000${site}\u0000${source}`, pairRate)) return false;
    if (policy.messagesPerHour !== undefined && !gate.rate(`tenant\u0000${tenant}`, { count: policy.messagesPerHour, perMs: HOUR_MS })) return false;
    return true;
  }

  /** Asks the scheduler to look again (the shared gate's answer may have changed). */
  wake(): void {
    this.#pump();
  }

  #tenant(name: string, policy: TenantPolicy, now: number): TenantState {
    let state = this.#tenants.get(name);
    const cap = policy.messagesPerHour ?? 0;
    if (!state) {
      state = { active: 0, tokens: cap, refilledAt: now };
      this.#tenants.set(name, state);
    } else if (cap > 0) {
      state.tokens = Math.min(cap, state.tokens + (now - state.refilledAt) * cap / HOUR_MS);
      state.refilledAt = now;
    }
    return state;
  }

  /**
   * The least loaded pair of this site among the tenant's sources that may take one more delivery
   * now (and, in a cluster, for which this node holds a lease: the gate wakes the scheduler when
   * one is granted).
   */
  #chooseSource(site: Site, tenant: string, policy: TenantPolicy, now: number): { pair: Pair; source: Source } | Wait {
    let best: { pair: Pair; source: Source; load: number } | null = null;
    let wake = Infinity;
    const gate = this.deps.gate;
    for (const source of policy.sources) {
      const paused = this.#blockedUntil(now, undefined, site.key, source.address ?? '');
      if (paused > now) {
        wake = Math.min(wake, paused);
        continue;
      }
      const pair = this.#pairs.take(site.key, site.limits, source.address, now);
      if (pair.active >= Math.floor(pair.window)) continue;
      const rate = pair.rate;
      if (rate && pair.tokens < 1) {
        wake = Math.min(wake, now + Math.ceil((1 - pair.tokens) * rate.perMs / rate.count));
        continue;
      }
      const load = pair.active / pair.window;
      if (best && load >= best.load) continue;
      if (gate && !gate.may(site.key, source.address ?? '', tenant, policy.weight, pair.max)) continue;
      best = { pair, source, load };
    }
    if (best && gate && !this.#sharedRates(gate, site.key, best.source.address ?? '', tenant, best.pair.rate, policy)) return NEVER;
    return best ?? { until: wake };
  }

  #nextLane(st: SiteTenant): Lane | null {
    for (let tried = 0; tried < st.ring.length; tried++) {
      if (st.pos >= st.ring.length) st.pos = 0;
      const lane = st.lanes.get(st.ring[st.pos++])!;
      if (lane.active < this.limits.laneConcurrency) return lane;
    }
    return null;
  }

  #start(site: Site, st: SiteTenant, lane: Lane, pair: Pair, source: Source, job: Job, policy: TenantPolicy, now: number): void {
    const tenant = this.#tenant(st.tenant, policy, now);
    this.#active++;
    site.active++;
    lane.active++;
    pair.active++;
    pair.usedAt = now;
    tenant.active++;
    if (!job.live?.cancelled()) {
      if (pair.rate) pair.tokens -= 1;
      if (policy.messagesPerHour !== undefined) tenant.tokens -= 1;
    }
    const dispatch = { job, site: site.key, source };
    const gate = this.deps.gate;
    gate?.started(site.key, source.address ?? '', st.tenant);
    (job.live ? job.live.run(dispatch) : this.deps.run(dispatch)).catch(() => undefined).finally(() => {
      gate?.finished(site.key, source.address ?? '', st.tenant);
      this.#active--;
      site.active--;
      lane.active--;
      pair.active--;
      pair.usedAt = this.#now();
      tenant.active--;
      this.#tidy(site, st, lane);
      this.#pump();
    });
  }

  /** Drops the structures of a lane, a tenant at a site and a site once nothing is queued or running there. */
  #tidy(site: Site, st: SiteTenant, lane: Lane): void {
    if (lane.active === 0 && lane.ready.length === lane.head) st.lanes.delete(lane.domain);
    if (st.lanes.size === 0) site.tenants.delete(st.tenant);
    if (site.tenants.size === 0 && site.active === 0 && this.#sites.get(site.key) === site) this.#sites.delete(site.key);
  }

  #blockedUntil(now: number, tenant: string | undefined, site: string | undefined, source?: string): number {
    return this.#blocks.until(now, tenant, site, source);
  }

  #expireBlocks(now = this.#now()): void {
    this.#blocks.expire(now);
    this.#pairs.prune(now);
  }

  #armTimer(wake: number): void {
    const next = Math.min(wake, this.#later.peek()?.due ?? Infinity);
    if (next === Infinity) return;
    if (this.#timer && this.#timerAt <= next) return;
    if (this.#timer) clearTimeout(this.#timer);
    this.#timerAt = next;
    this.#timer = setTimeout(() => {
      this.#timer = null;
      this.#timerAt = Infinity;
      this.#pump();
    }, Math.min(Math.max(0, next - this.#now()), 2 ** 31 - 1));
    this.#timer.unref();
  }
}

/** Where a job goes when its site cannot be named (the lookup failed): a site of its own, so delivery can report why. */
export function fallbackSite(domain: string): SiteRef {
  return { key: `domain:${domain}`, limits: { maxConnections: 5, initialConnections: 5 } };
}
