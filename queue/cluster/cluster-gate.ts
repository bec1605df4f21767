/*
 * The scheduler's shared gate (queue-scheduler.ts `SharedGate`) on a cluster's Redis: connection
 * leases per (site, source address, tenant) and shared message rates, answered synchronously from
 * what this node holds, asked of Redis in the background.
 *
 * Leases. A delivery on (site, source) for a tenant starts only while the node's deliveries there
 * for that tenant are fewer than the leases it holds (and, while another tenant waits, its fair share;
 * a lease above the share, granted in turn, serves one delivery and goes back).
 * When it holds too few, the gate asks Redis for one more (ACQUIRE, cluster-scripts.ts), at most one
 * question at a time per lease, again after `RETRY_MS` while refused (doubling up to `MAX_RETRY_MS`
 * while refusals go on, so a tenant waiting at a full destination costs a few commands a second), and wakes the scheduler when
 * the answer may start something. Leases stay held while in use, so a steady flow costs no Redis
 * command per message. One that stays unused for `LINGER_MS`, or that the fair share takes back
 * (another tenant is waiting below its share), is released: the node's idle connections to the
 * pair are closed down to the leases it keeps first (`trim`), then Redis is told — so the
 * destination never sees more connections from the address than leases cluster-wide. Every
 * heartbeat renews the node's leases (ASSERT, one command per pair, pipelined) and brings back each
 * tenant's fair share; a node that stops renewing loses its leases after `cluster.leaseTtl`.
 *
 * Rates: the shared message rates are cluster-rates.ts's; the gate answers for them too.
 *
 * Redis away (or not yet answered since this node started): each node takes an equal part of each
 * cap (`cluster.fallbackNodes`, else the live nodes last seen) and of each rate, counts it, and
 * when Redis returns re-asserts the leases its deliveries actually use. For one lease time after
 * Redis was lost a node also keeps within what it had then, while the nodes that had more than
 * their part close their idle connections and finish down to it. Nothing waits for Redis to
 * accept or deliver mail.
 * Settings: cluster.leaseTtl, cluster.heartbeat, cluster.fallbackNodes.
 */
import type { Logger } from 'pino';
import type { SharedGate } from '../queue-scheduler.js';
import type { ClusterLink } from './cluster-link.js';
import { ACQUIRE, ASSERT } from './cluster-scripts.js';
import { SharedRates, type Rate } from './cluster-rates.js';

interface Lease {
  site: string;
  source: string;
  tenant: string;
  weight: number;
  cap: number;
  /** Leases this node holds in Redis. */
  held: number;
  /** How many it may keep once its deliveries end (its fair share while another tenant waits). */
  keep: number;
  /** Deliveries running on them. */
  active: number;
  /** Leases granted and not used yet: the one above the share is used once even while another tenant waits. */
  fresh: number;
  asking: boolean;
  /** Leases given back whose connections are still being closed: Redis counts them until they are. */
  draining: number;
  /** Refusals in a row (the next question waits longer). */
  refusals: number;
  /** Counts every local change of `held` (an answer that crossed a release re-asserts). */
  changes: number;
  retryAt: number;
  linger: NodeJS.Timeout | null;
}

export interface GateDeps {
  /** Closes this node's idle connections to the pair until at most `keep` are open. */
  trim(site: string, source: string, keep: number): Promise<void>;
  /** This node's connections open to the pair now, idle ones included. */
  open(site: string, source: string): number;
  /** How many nodes share each cap while Redis is away. */
  nodes(): number;
  wake(): void;
}

const RETRY_MS = 100;
const MAX_RETRY_MS = 800;
const LINGER_MS = 1_000;
/** After closing connections for a release: the destination counts a connection until it has seen it end. */
const CLOSE_SETTLE_MS = 150;

function leaseKey(site: string, source: string, tenant: string): string {
  return `${site}\u0000${source}\u0000${tenant}`;
}

export class ClusterGate implements SharedGate {
  readonly #leases = new Map<string, Lease>();
  /** Deliveries in flight per pair (site, source), every tenant. */
  readonly #pairActive = new Map<string, number>();
  readonly #rates: SharedRates;
  /** Pairs this process has asked about (its first question at one drops stale fields of an earlier life). */
  readonly #askedAt = new Set<string>();
  /** False until this node has put its leases in Redis in order after (re)connecting. */
  #synced = false;
  /**
   * Until then, after (re)connecting, the node asks for no more than its fallback part of a cap:
   * a Redis that restarted empty learns the other nodes' leases only as they reconnect.
   */
  #settledAt = 0;
  /**
   * When Redis was lost, and what this node then held or had open per pair: for one lease time the
   * node keeps within that as well as its part of the cap, while the nodes above their part shrink
   * to it (their idle connections are closed at once).
   */
  #lostAt = 0;
  /**
   * When Redis last confirmed this node's leases. A node whose renewals fail (Redis slow, this
   * process stalled) starts nothing new once half a lease time has passed without one: the others
   * may soon count its leases as lapsed.
   */
  #renewedAt = Date.now();
  readonly #heldAtLoss = new Map<string, number>();
  /** Leases held per pair (site, source), every tenant: the sum of the pair's `held`. */
  readonly #heldByPair = new Map<string, number>();
  #timer: NodeJS.Timeout | null = null;
  #wakeTimer: NodeJS.Timeout | null = null;
  #wakeAt = Infinity;
  #leaseFallbacks = 0;

  constructor(private readonly link: ClusterLink, private readonly deps: GateDeps, private readonly log: Logger) {
    link.redis.defineCommand('ichidanAcquire', { numberOfKeys: 5, lua: ACQUIRE });
    link.redis.defineCommand('ichidanAssert', { numberOfKeys: 5, lua: ASSERT });
    this.#rates = new SharedRates(link, { shared: () => this.shared, nodes: () => this.#nodes(), wake: () => this.deps.wake(), wakeIn: (ms) => this.#wakeIn(ms) });
    link.on('up', () => void this.#resync());
    link.on('down', () => this.#lost());
    if (link.up) void this.#resync();
  }

  start(): void {
    this.#timer = setInterval(() => void this.#heartbeat(), this.link.config.heartbeat);
    this.#timer.unref();
  }

  /** Stops renewing and gives every lease back at once (a node stopping gracefully), so the others need not wait for them to lapse. */
  async close(): Promise<void> {
    if (this.#timer) clearInterval(this.#timer);
    if (this.#wakeTimer) clearTimeout(this.#wakeTimer);
    for (const l of this.#leases.values()) {
      if (l.linger) clearTimeout(l.linger);
      l.linger = null;
      // Deliveries that outlived the queue's grace still hold theirs.
      this.#setHeld(l, l.active);
    }
    if (!this.shared) return;
    const pairs = new Set([...this.#leases.values()].map((l) => `${l.site}\u0000${l.source}`));
    await Promise.all([...pairs].map((p) => {
      const [site, source] = p.split('\u0000');
      return this.#assert(site, source);
    }));
  }

  /** Whether the limits in force come from Redis (false: the local fallback). */
  get shared(): boolean {
    return this.link.up && this.#synced;
  }

  may(site: string, source: string, tenant: string, weight: number, cap: number): boolean {
    if (!this.shared) {
      this.#leaseFallbacks++;
      return (this.#pairActive.get(`${site}\u0000${source}`) ?? 0) < this.#fallbackCap(cap, site, source);
    }
    const lease = this.#lease(site, source, tenant);
    lease.weight = weight;
    lease.cap = cap;
    const unconfirmed = Date.now() - this.#renewedAt - this.link.config.leaseTtl / 2;
    if (unconfirmed > 0 && lease.held > 0) {
      this.#wakeIn(this.link.config.heartbeat);
      return false;
    }
    if (lease.active < lease.held && (lease.active < lease.keep || lease.fresh > 0)) return true;
    if (lease.active >= lease.keep && lease.keep < lease.held) return false;
    if (Date.now() < this.#settledAt && this.#heldAt(site, source) >= Math.max(1, Math.floor(cap / this.#nodes()))) {
      this.#wakeIn(this.#settledAt - Date.now());
      return false;
    }
    this.#ask(lease);
    return false;
  }

  /** Connections this node may have open to the pair: the leases it holds there (or its fallback part of `cap`). */
  connections(site: string, source: string, cap: number): number {
    if (!this.shared) return this.#fallbackCap(cap, site, source);
    return Math.max(this.#heldAt(site, source), this.#pairActive.get(`${site}\u0000${source}`) ?? 0);
  }

  #heldAt(site: string, source: string): number {
    return this.#heldByPair.get(`${site}\u0000${source}`) ?? 0;
  }

  /** Every change of a lease's `held` goes through here, so the pair's sum is kept, not recounted. */
  #setHeld(lease: Lease, held: number): void {
    const pair = `${lease.site}\u0000${lease.source}`;
    const sum = (this.#heldByPair.get(pair) ?? 0) - lease.held + held;
    if (sum > 0) this.#heldByPair.set(pair, sum); else this.#heldByPair.delete(pair);
    lease.held = held;
  }

  started(site: string, source: string, tenant: string): void {
    const pair = `${site}\u0000${source}`;
    this.#pairActive.set(pair, (this.#pairActive.get(pair) ?? 0) + 1);
    const lease = this.#lease(site, source, tenant);
    lease.active++;
    lease.fresh = Math.max(0, lease.fresh - 1);
    if (lease.linger) {
      clearTimeout(lease.linger);
      lease.linger = null;
    }
  }

  finished(site: string, source: string, tenant: string): void {
    const pair = `${site}\u0000${source}`;
    const n = (this.#pairActive.get(pair) ?? 1) - 1;
    if (n > 0) this.#pairActive.set(pair, n); else this.#pairActive.delete(pair);
    const lease = this.#leases.get(leaseKey(site, source, tenant));
    if (!lease) return;
    lease.active = Math.max(0, lease.active - 1);
    if (lease.held > lease.keep && lease.active < lease.held) void this.#release(lease, Math.max(lease.active, lease.keep));
    else this.#linger(lease);
  }

  /** A lease held and unused goes back after LINGER_MS, unless a delivery takes it first. */
  #linger(lease: Lease): void {
    if (lease.linger || lease.active >= lease.held) return;
    lease.linger = setTimeout(() => {
      lease.linger = null;
      if (lease.active < lease.held) void this.#release(lease, lease.active);
    }, LINGER_MS);
    lease.linger.unref();
  }

  rate(key: string, rate: Rate): boolean {
    return this.#rates.take(key, rate);
  }

  /** Leases and rates decided locally because Redis was away (for the metrics). */
  get fallbackDecisions(): number {
    return this.#leaseFallbacks + this.#rates.fallbackDecisions;
  }

  /** Leases this node holds, for status and tests. */
  holdings(): Array<{ site: string; source: string; tenant: string; held: number; keep: number; active: number }> {
    return [...this.#leases.values()].filter((l) => l.held > 0 || l.active > 0)
      .map(({ site, source, tenant, held, keep, active }) => ({ site, source, tenant, held, keep, active }));
  }

  #nodes(): number {
    return Math.max(1, this.link.config.fallbackNodes ?? this.deps.nodes());
  }

  /** This node's part of a cap while Redis is away (and, just after it was lost, no more than it had then). */
  #fallbackCap(cap: number, site?: string, source?: string): number {
    const part = Math.max(1, Math.floor(cap / this.#nodes()));
    const since = Date.now() - this.#lostAt;
    if (site === undefined || since >= this.link.config.leaseTtl) return part;
    this.#wakeIn(this.link.config.leaseTtl - since);
    return Math.min(part, this.#heldAtLoss.get(`${site}\u0000${source}`) ?? 0);
  }

  /** Redis is gone: the fallback decides, and connections above this node's part are closed as they come idle. */
  #lost(): void {
    const wasShared = this.#synced;
    this.#synced = false;
    if (wasShared) {
      this.#lostAt = Date.now();
      this.#heldAtLoss.clear();
      for (const l of this.#leases.values()) {
        const pair = `${l.site}\u0000${l.source}`;
        this.#heldAtLoss.set(pair, Math.max(this.#heldAtLoss.get(pair) ?? 0, this.#heldAt(l.site, l.source), this.deps.open(l.site, l.source)));
      }
      for (const l of this.#leases.values()) {
        void this.deps.trim(l.site, l.source, Math.max(this.#pairActive.get(`${l.site}\u0000${l.source}`) ?? 0, this.#fallbackCap(l.cap, l.site, l.source))).catch(() => undefined);
      }
    }
    this.deps.wake();
  }

  #lease(site: string, source: string, tenant: string): Lease {
    const key = leaseKey(site, source, tenant);
    let lease = this.#leases.get(key);
    if (!lease) {
      lease = { site, source, tenant, weight: 1, cap: 1, held: 0, keep: Infinity, active: 0, fresh: 0, asking: false, draining: 0, refusals: 0, changes: 0, retryAt: 0, linger: null };
      this.#leases.set(key, lease);
    }
    return lease;
  }

  #keys(site: string): string[] {
    return ['held', 'alive', 'want', 'weight', 'extra'].map((k) => this.link.siteKey(site, 'leases', k));
  }

  #ask(lease: Lease): void {
    const now = Date.now();
    if (lease.asking) return;
    if (now < lease.retryAt) {
      this.#wakeIn(lease.retryAt - now);
      return;
    }
    lease.asking = true;
    const changes = lease.changes;
    const ttl = this.link.config.leaseTtl;
    // The first question at a pair since this process started drops what an earlier life left there.
    const pair = `${lease.site}\u0000${lease.source}`;
    const first = !this.#askedAt.has(pair);
    this.#askedAt.add(pair);
    void this.link.call(1, (r) => (r as unknown as AcquireCommands).ichidanAcquire(
      ...this.#keys(lease.site), this.link.node, lease.source, ttl, lease.tenant, lease.weight, lease.cap, MAX_RETRY_MS * 3, counted(lease), first ? '1' : '0',
    )).then((answer) => {
      lease.asking = false;
      if (answer && answer[0] === 1 && this.shared) {
        this.#setHeld(lease, lease.held + 1);
        lease.fresh++;
        lease.refusals = 0;
        lease.keep = answer[3] >= 0 ? answer[3] : Infinity;
        // Redis counted from the leases held when the question left; a release since then is told again.
        if (lease.changes !== changes) void this.#assert(lease.site, lease.source);
        // A lease no job takes (the tenant was held meanwhile, another source was chosen) goes back.
        this.#linger(lease);
        this.deps.wake();
        return;
      }
      if (answer && answer[3] >= 0) lease.keep = answer[3];
      const wait = Math.min(MAX_RETRY_MS, RETRY_MS * 2 ** lease.refusals++);
      lease.retryAt = Date.now() + wait;
      this.#wakeIn(wait);
    });
  }

  /** Gives leases back down to `keep`: the pair's idle connections are closed first, then Redis is told. */
  async #release(lease: Lease, keep: number): Promise<void> {
    if (keep >= lease.held) return;
    const given = lease.held - keep;
    this.#setHeld(lease, keep);
    // No new delivery uses them from now, but Redis counts them until their connections are closed.
    lease.draining += given;
    lease.fresh = Math.min(lease.fresh, Math.max(0, keep - lease.active));
    lease.changes++;
    if (lease.keep !== Infinity && lease.keep >= lease.held) lease.keep = Infinity;
    try {
      const keepOpen = this.connections(lease.site, lease.source, lease.cap);
      if (this.deps.open(lease.site, lease.source) > keepOpen) {
        await this.deps.trim(lease.site, lease.source, keepOpen);
        await new Promise((r) => setTimeout(r, CLOSE_SETTLE_MS));
      }
    } catch (err) {
      this.log.debug({ err }, 'cluster: closing idle connections before a release failed');
    } finally {
      lease.draining -= given;
    }
    await this.#assert(lease.site, lease.source);
  }

  /** Tells Redis what this node holds at one pair and takes back each tenant's share. */
  async #assert(site: string, source: string): Promise<void> {
    // With no lease left at the pair, the assertion names no tenant: Redis drops this node's fields there.
    const leases = [...this.#leases.values()].filter((l) => l.site === site && l.source === source);
    const args = leases.flatMap((l) => assertArgs(l));
    const answer = await this.link.call(1, (r) => (r as unknown as AcquireCommands).ichidanAssert(...this.#keys(site), this.link.node, source, this.link.config.leaseTtl, ...args));
    if (answer) this.#applyKeep(leases, answer);
  }

  #applyKeep(leases: Lease[], keep: number[]): void {
    leases.forEach((l, i) => {
      l.keep = keep[i] < l.held ? keep[i] : Infinity;
      if (l.held > l.keep && l.active < l.held) void this.#release(l, Math.max(l.active, l.keep));
      if (l.held === 0 && l.active === 0 && l.draining === 0 && !l.asking) this.#leases.delete(leaseKey(l.site, l.source, l.tenant));
    });
  }

  /** Renews every lease this node holds (one command per pair, one round trip) and takes back the shares. */
  async #heartbeat(): Promise<void> {
    if (!this.shared) return;
    const sentAt = Date.now();
    const pairs = new Map<string, Lease[]>();
    for (const l of this.#leases.values()) {
      const key = `${l.site}\u0000${l.source}`;
      const list = pairs.get(key);
      if (list) list.push(l); else pairs.set(key, [l]);
    }
    if (pairs.size === 0) {
      this.#renewedAt = sentAt;
      return;
    }
    const entries = [...pairs.values()];
    const answers = await this.link.call(entries.length, async (r) => {
      const pipe = r.pipeline();
      for (const list of entries) {
        const { site, source } = list[0];
        (pipe as unknown as AcquireCommands).ichidanAssert(...this.#keys(site), this.link.node, source, this.link.config.leaseTtl, ...list.flatMap((l) => assertArgs(l)));
      }
      return pipe.exec();
    });
    if (answers && answers.every(([err]) => !err)) this.#renewedAt = sentAt;
    answers?.forEach(([err, keep], i) => { if (!err) this.#applyKeep(entries[i], keep as number[]); });
  }

  /**
   * After (re)connecting: the leases this node's deliveries use now are what it holds, and Redis is
   * told so (a Redis that restarted forgot them; a node that restarted left stale ones). Until then
   * the fallback decides.
   */
  async #resync(): Promise<void> {
    // After Redis was lost (it may have restarted empty), the others' leases come back as they reconnect.
    if (this.#lostAt > 0) this.#settledAt = Date.now() + this.link.config.leaseTtl;
    // What the deliveries use, and the idle connections still open beside them, count as held.
    const idle = new Map<string, number>();
    for (const l of this.#leases.values()) {
      const pair = `${l.site}\u0000${l.source}`;
      if (!idle.has(pair)) idle.set(pair, Math.max(0, this.deps.open(l.site, l.source) - (this.#pairActive.get(pair) ?? 0)));
      const extra = idle.get(pair)!;
      this.#setHeld(l, l.active + extra);
      idle.set(pair, 0);
      l.keep = Infinity;
      l.changes++;
      this.#linger(l);
    }
    // Leases of this node from before a restart are replaced at the first question about their pair, or lapse with its alive entry there.
    const pairs = new Set([...this.#leases.values()].map((l) => `${l.site}\u0000${l.source}`));
    for (const pair of pairs) {
      const [site, source] = pair.split('\u0000');
      await this.#assert(site, source);
    }
    if (!this.link.up) return;
    this.#renewedAt = Date.now();
    this.#synced = true;
    this.log.info({ pairs: pairs.size }, 'cluster: leases in Redis re-asserted');
    this.deps.wake();
  }

  #wakeIn(ms: number): void {
    const at = Date.now() + ms;
    if (this.#wakeTimer && this.#wakeAt <= at) return;
    if (this.#wakeTimer) clearTimeout(this.#wakeTimer);
    this.#wakeAt = at;
    this.#wakeTimer = setTimeout(() => {
      this.#wakeTimer = null;
      this.#wakeAt = Infinity;
      this.deps.wake();
    }, ms);
    this.#wakeTimer.unref();
  }
}

/**
 * What ASSERT is told of a lease: a question still out may have been granted already, so it counts
 * as held (too many for a moment is safe; too few would let another node past the cap).
 */
function assertArgs(l: Lease): string[] {
  return [l.tenant, String(counted(l) + (l.asking ? 1 : 0)), String(l.cap)];
}

/** The leases Redis must count for this one: those held, and those whose connections are still closing. */
function counted(l: Lease): number {
  return l.held + l.draining;
}

interface AcquireCommands {
  ichidanAcquire(...args: Array<string | number>): Promise<[number, number, number, number]>;
  ichidanAssert(...args: Array<string | number>): Promise<number[]>;
}
