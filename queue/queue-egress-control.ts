/*
 * Egress control (`EgressControl`): what the egress does when a destination pushes back, and the
 * operator's holds — every action an event that can be listed and undone (recorded through the
 * records store, queue-records.ts).
 *
 * Takes the signal each delivery left (delivery/delivery-throttle.ts) with its (site, source
 * address) pair and tenant:
 *   ok         the pair's window may grow (slow start, in the scheduler), except while the pair is
 *              paused: those successes are of deliveries that began before the throttle;
 *   slow       the window shrinks by one; recorded as a `slowed` event (at most one a minute a pair);
 *   capped     the destination refused one more connection at its banner (a cap on connections per
 *              client address): the pair's window is held below the count it refused, one more
 *              tried after `capProbe` (queue-pairs.ts). No pause and no blame: the limit is the
 *              address's, shared by every tenant sending from it, and the open connections go on;
 *   throttled, refused
 *              the window halves and the pair is paused: `delivery.throttle.pause`, doubled for
 *              each further pause within `window`, up to `maxPause` (a `paused` event, lifting
 *              by itself). Signals that arrive while the pair is paused only count.
 * Attribution: once a site has had `minSignals` throttle replies within `window` (a refused
 *   connection is as likely a host that is down, and blames no one), from at least
 *   two tenants' traffic, the tenant whose share of those signals — or of the site's deliveries
 *   in the window — reaches `attributionShare` is suspended for that site for `tenantSuspension`
 *   (a `suspended` event). The other tenants keep flowing: on another source address of their
 *   pool at once, on the paused one when its pause ends. With one tenant at a site there is no
 *   one else to protect: the pair's pause is the whole reaction.
 * Undo: lifts the block the event installed, and puts back the window it lowered.
 * In a cluster (`sharing`, `evidence`, wired in queue/cluster/cluster-egress.ts): every event has
 *   a `uid`; the blocking ones and every undo are shared, other nodes' are put in force here
 *   (`adopt`, `undoShared`); attribution counts every node's evidence (queue-attribution.ts).
 * Settings: delivery.throttle.*
 */
import { randomBytes } from 'node:crypto';
import type { Logger } from 'pino';
import type { Signal } from '../delivery/index.js';
import { blame, type TenantEvidence } from './queue-attribution.js';
import type { QueueConfig } from './queue-config.js';
import type { Scheduler } from './queue-scheduler.js';
import type { EgressEvent, EgressEventKind, NewEgressEvent } from './queue-records-egress.js';
import type { QueueRecords } from './queue-records.js';
import { SeenWindow, type Seen } from './queue-egress-seen.js';

interface PairMemory {
  /** Pauses within the throttle window, for the doubling. */
  pauses: number;
  lastPauseAt: number;
  pausedUntil: number;
  lastSlowEventAt: number;
}

export interface HoldRequest {
  tenant?: string;
  site?: string;
  source?: string;
  /** Milliseconds; absent: until released. */
  forMs?: number;
  reason: string;
  kind?: 'hold' | 'suspended';
}

/** How the events of this node reach the cluster's other nodes (queue/cluster/cluster-egress.ts). */
export interface EgressSharing {
  /** This node's name: the `origin` of its events. */
  readonly node: string;
  /** An event that blocks delivery, recorded here. */
  recorded(event: NewEgressEvent & { uid: string; origin: string }): void;
  /** An event undone here. */
  undone(uid: string, at: number, by: string): void;
}

/** The cluster's evidence for attribution (queue/cluster/cluster-signals.ts). */
export interface SiteEvidence {
  note(site: string, tenant: string, throttled: boolean): void;
  /** Each tenant's deliveries and throttle replies at the site over `window`, every node's; undefined when Redis is away. */
  sums(site: string, now: number, window: number): Promise<Map<string, TenantEvidence> | undefined>;
}

const BLOCKING: ReadonlySet<EgressEventKind> = new Set(['paused', 'suspended', 'hold']);

const MAX_SEEN_PER_SITE = 10_000;
const SLOW_EVENT_EVERY_MS = 60_000;
const PRUNE_EVERY_MS = 60_000;

export class EgressControl {
  readonly #seen = new Map<string, SeenWindow>();
  readonly #pairs = new Map<string, PairMemory>();
  /** (tenant, site) suspended by this control, until when. */
  readonly #suspended = new Map<string, number>();
  #prunedAt = 0;
  /** Told of every event as it is recorded (the metrics count them). */
  onEvent: (event: NewEgressEvent) => void = () => undefined;
  /** Set in a cluster: events shared with the other nodes. */
  sharing: EgressSharing | null = null;
  /** Set in a cluster: attribution counts every node's evidence. */
  evidence: SiteEvidence | null = null;

  constructor(private config: QueueConfig, private readonly scheduler: Scheduler, private readonly records: QueueRecords, private readonly log: Logger) {}

  reconfigure(config: QueueConfig): void {
    this.config = config;
  }

  /** delivery.throttle.window of the config in force. */
  get throttleWindow(): number {
    return this.config.delivery.throttle.window;
  }

  /** Puts the events still in force back into the scheduler (at startup). */
  restore(now = Date.now()): number {
    const open = this.records.egressEvents({ limit: 100_000, open: true, now });
    for (const e of open) this.#enforce(e);
    return open.length;
  }

  #enforce(e: Pick<EgressEvent, 'kind' | 'tenant' | 'site' | 'source' | 'until' | 'block_id'>): void {
    if (!e.block_id) return;
    // A pause names the tenant whose delivery drew the reply, but pauses the pair for every tenant.
    const tenant = e.kind === 'paused' ? undefined : e.tenant ?? undefined;
    this.scheduler.block({ id: e.block_id, tenant, site: e.site ?? undefined, source: e.source ?? undefined, until: e.until });
    if (e.kind === 'suspended' && e.tenant && e.site) this.#suspended.set(`${e.tenant}\u0000${e.site}`, e.until ?? Infinity);
  }

  /** What one delivery on (site, source) for `tenant` showed. */
  onSignal(site: string, source: string | null, tenant: string, signal: Signal, now = Date.now()): void {
    const t = this.config.delivery.throttle;
    if (now - this.#prunedAt >= PRUNE_EVERY_MS) this.#prune(now, t.window);
    // A refused connection is as likely a host that is down as a limit: it pauses, but blames no one.
    const throttled = signal.kind === 'throttled' || signal.kind === 'refused';
    this.#remember(site, { at: now, tenant, throttled: signal.kind === 'throttled' }, now - t.window);
    this.evidence?.note(site, tenant, signal.kind === 'throttled');
    const pairKey = `${site}\u0000${source ?? ''}`;
    if (signal.kind === 'ok') {
      // A delivery that began before the pair was throttled says nothing about the lowered window.
      if (!((this.#pairs.get(pairKey)?.pausedUntil ?? 0) > now)) this.scheduler.feedback(site, source, 'ok');
      return;
    }
    if (signal.kind === 'capped') {
      const before = this.scheduler.connections(site, source);
      const cap = this.scheduler.cap(site, source, signal.open ?? 2, t.capProbe);
      if (cap !== before) this.log.info({ site, source, cap, refusedAt: signal.open, reason: signal.detail }, 'destination caps connections per address: pair held below it');
      return;
    }
    if (signal.kind === 'slow') {
      const before = this.scheduler.window(site, source);
      this.scheduler.feedback(site, source, 'slow');
      const mem = this.#pair(pairKey);
      if (now - mem.lastSlowEventAt >= SLOW_EVENT_EVERY_MS && before !== undefined) {
        mem.lastSlowEventAt = now;
        this.#record({ at: now, kind: 'slowed', actor: 'auto', tenant, site, source: source ?? '', until: null, reason: signal.detail,
          detail: JSON.stringify({ windowBefore: before, windowAfter: this.scheduler.window(site, source) }), block_id: null, uid: newUid() });
      }
      return;
    }
    if (!throttled) return;
    const mem = this.#pair(pairKey);
    if (mem.pausedUntil > now) return;
    const before = this.scheduler.window(site, source);
    this.scheduler.feedback(site, source, 'throttled');
    mem.pauses = now - mem.lastPauseAt <= t.window ? mem.pauses + 1 : 0;
    mem.lastPauseAt = now;
    const pause = Math.min(t.maxPause, t.pause * 2 ** mem.pauses);
    mem.pausedUntil = now + pause;
    const uid = newUid();
    const blockId = `b${uid}`;
    this.scheduler.block({ id: blockId, site, source: source ?? '', until: now + pause });
    this.log.warn({ site, source, tenant, signal: signal.kind, reason: signal.detail, pauseMs: pause }, 'destination throttling: pair paused');
    this.#record({ at: now, kind: 'paused', actor: 'auto', tenant, site, source: source ?? '', until: now + pause, reason: `${signal.kind}: ${signal.detail}`,
      detail: JSON.stringify({ windowBefore: before, windowAfter: this.scheduler.window(site, source) }), block_id: blockId, uid });
    if (signal.kind === 'throttled') this.#attribute(site, now);
  }

  /** Suspends the tenant that dominates a site's throttle signals or its volume, when there is one. */
  #attribute(site: string, now: number): void {
    const t = this.config.delivery.throttle;
    if (t.tenantSuspension <= 0) return;
    if (!this.evidence) {
      this.#suspendBlamed(site, this.#localEvidence(site, now), now);
      return;
    }
    this.evidence.sums(site, now, t.window)
      .then((sums) => this.#suspendBlamed(site, sums ?? this.#localEvidence(site, now), now))
      .catch((err) => this.log.error({ err, site }, 'throttle attribution failed'));
  }

  #localEvidence(site: string, now: number): Map<string, TenantEvidence> {
    const since = now - this.config.delivery.throttle.window;
    const evidence = new Map<string, TenantEvidence>();
    for (const s of this.#seen.get(site) ?? []) {
      if (s.at < since) continue;
      let e = evidence.get(s.tenant);
      if (!e) evidence.set(s.tenant, (e = { deliveries: 0, throttles: 0 }));
      e.deliveries++;
      if (s.throttled) e.throttles++;
    }
    return evidence;
  }

  #suspendBlamed(site: string, evidence: Map<string, TenantEvidence>, now: number): void {
    const t = this.config.delivery.throttle;
    const blamed = blame(evidence, t);
    if (!blamed) return;
    const key = `${blamed.tenant}\u0000${site}`;
    if ((this.#suspended.get(key) ?? 0) > now) return;
    const until = now + t.tenantSuspension;
    this.#suspended.set(key, until);
    const uid = newUid();
    const blockId = `b${uid}`;
    this.scheduler.block({ id: blockId, tenant: blamed.tenant, site, until });
    const reason = `${Math.round(blamed.share * 100)}% of the site's ${blamed.of} in the last ${Math.round(t.window / 1000)} s (${blamed.throttles} throttle signals)`;
    this.log.warn({ site, tenant: blamed.tenant, until, reason }, 'destination throttling: tenant suspended for the site');
    void this.#record({ at: now, kind: 'suspended', actor: 'auto', tenant: blamed.tenant, site, source: null, until, reason, detail: null, block_id: blockId, uid });
  }

  /** An operator's hold (or suspension) of a tenant, a site, a tenant at a site, or a pair. Resolves with the event id. */
  async hold(req: HoldRequest, now = Date.now()): Promise<number> {
    if (req.tenant === undefined && req.site === undefined && req.source === undefined) throw new Error('a hold needs a tenant, a site or a source');
    const until = req.forMs === undefined ? null : now + req.forMs;
    const uid = newUid();
    const blockId = `b${uid}`;
    this.scheduler.block({ id: blockId, tenant: req.tenant, site: req.site, source: req.source, until });
    return this.#record({ at: now, kind: req.kind ?? 'hold', actor: 'operator', tenant: req.tenant ?? null, site: req.site ?? null, source: req.source ?? null,
      until, reason: req.reason, detail: null, block_id: blockId, uid });
  }

  /**
   * Another node's event: recorded here under its uid (once, however often it arrives) and put in
   * force. A pause also counts in this node's memory of the pair (its doubling, and no second pause
   * while it lasts); a suspension keeps attribution from suspending the same tenant again.
   */
  async adopt(event: NewEgressEvent & { uid: string; origin: string }, now = Date.now()): Promise<void> {
    if (!BLOCKING.has(event.kind) || (event.until !== null && event.until <= now)) return;
    const known = this.records.egressEventByUid(event.uid);
    if (known) return;
    const id = await this.records.recordEgressEvent(event);
    if (this.records.egressEvent(id)?.undone_at != null) return;
    this.#enforce(event);
    if (event.kind === 'paused' && event.site && event.source !== null && event.until !== null) {
      const mem = this.#pair(`${event.site}\u0000${event.source}`);
      mem.pauses = event.at - mem.lastPauseAt <= this.config.delivery.throttle.window ? mem.pauses + 1 : 0;
      mem.lastPauseAt = event.at;
      mem.pausedUntil = Math.max(mem.pausedUntil, event.until);
    }
    this.log.info({ event: id, uid: event.uid, kind: event.kind, origin: event.origin, tenant: event.tenant, site: event.site }, 'egress event from another node in force');
  }

  /** Another node undid an event (by its uid): lifted here too. Resolves with the row, or null when nothing was in force. */
  async undoShared(uid: string, by: string, now = Date.now()): Promise<EgressEvent | null> {
    const row = await this.records.undoEgressEventByUid(uid, now, by);
    if (!row) return null;
    this.#lift(row);
    this.log.info({ event: row.id, uid, kind: row.kind, by }, 'egress event undone on another node');
    return row;
  }

  /** The events in force here that the cluster shares (made in a cluster: they have an origin). */
  sharedInForce(now = Date.now()): EgressEvent[] {
    return this.records.egressEvents({ limit: 100_000, open: true, now }).filter((e) => e.uid !== null && e.origin !== null);
  }

  /** Undoes an event: lifts its block and restores the window it lowered. Resolves with the event, or null when there was nothing to undo. */
  async undo(id: number, by: string, now = Date.now()): Promise<EgressEvent | null> {
    const row = await this.records.undoEgressEvent(id, now, by);
    if (!row) return null;
    this.#lift(row);
    if (row.uid !== null && row.origin !== null && this.sharing) this.sharing.undone(row.uid, now, by);
    this.log.info({ event: id, kind: row.kind, by }, 'egress event undone');
    return row;
  }

  /** Lifts what an undone event did here; the window it lowered is put back only where it was lowered. */
  #lift(row: EgressEvent): void {
    if (row.block_id) this.scheduler.unblock(row.block_id);
    if (row.site && row.source !== null) {
      const mine = row.origin === null || row.origin === this.sharing?.node;
      const { windowBefore } = row.detail ? JSON.parse(row.detail) as { windowBefore?: number } : {};
      if (mine && windowBefore !== undefined) this.scheduler.setWindow(row.site, row.source || null, windowBefore);
      const mem = this.#pairs.get(`${row.site}\u0000${row.source}`);
      if (mem && row.kind === 'paused') mem.pausedUntil = 0;
    }
    if (row.kind === 'suspended' && row.tenant && row.site) this.#suspended.delete(`${row.tenant}\u0000${row.site}`);
  }

  /** Undoes the operator holds in force that match exactly this tenant/site. Resolves with how many. */
  async release(tenant: string | undefined, site: string | undefined, by: string, now = Date.now()): Promise<number> {
    const open = this.records.egressEvents({ limit: 100_000, open: true, now })
      .filter((e) => (e.kind === 'hold' || e.kind === 'suspended') && (e.tenant ?? undefined) === tenant && (site === undefined || e.site === site));
    let n = 0;
    for (const e of open) if (await this.undo(e.id, by, now)) n++;
    return n;
  }

  events(opts: { limit: number; open?: boolean }): EgressEvent[] {
    return this.records.egressEvents(opts);
  }

  event(id: number): EgressEvent | undefined {
    return this.records.egressEvent(id);
  }

  /** Forgets what the window no longer needs: sites and pairs with nothing recent, suspensions that ended. */
  #prune(now: number, window: number): void {
    this.#prunedAt = now;
    for (const [site, list] of this.#seen) if ((list.lastAt ?? -Infinity) < now - window) this.#seen.delete(site);
    for (const [key, mem] of this.#pairs) {
      if (mem.pausedUntil <= now && now - Math.max(mem.lastPauseAt, mem.lastSlowEventAt) > window) this.#pairs.delete(key);
    }
    for (const [key, until] of this.#suspended) if (until <= now) this.#suspended.delete(key);
  }

  #pair(key: string): PairMemory {
    let mem = this.#pairs.get(key);
    if (!mem) this.#pairs.set(key, (mem = { pauses: 0, lastPauseAt: 0, pausedUntil: 0, lastSlowEventAt: 0 }));
    return mem;
  }

  #remember(site: string, seen: Seen, since: number): void {
    let list = this.#seen.get(site);
    if (!list) this.#seen.set(site, (list = new SeenWindow(MAX_SEEN_PER_SITE)));
    list.add(seen, since);
  }

  /**
   * Writes the event; the block it describes is already in force. Resolves with its id (0 if it
   * could not be written). In a cluster a blocking event is then shared.
   */
  async #record(event: NewEgressEvent & { kind: EgressEventKind; uid: string }): Promise<number> {
    const sharing = this.sharing;
    const shared = sharing ? { ...event, origin: sharing.node } : null;
    const row = shared ?? event;
    this.onEvent(row);
    // Shared before the row is written: from now on a reload of the cluster's state counts it as
    // this node's own, not yet published, and does not lift it as gone elsewhere.
    if (sharing && shared && BLOCKING.has(event.kind)) sharing.recorded(shared);
    let id = 0;
    try {
      id = await this.records.recordEgressEvent(row);
    } catch (err) {
      this.log.error({ err, event }, 'could not record an egress event');
    }
    return id;
  }
}

/** An event's name across the cluster: unique without coordination. */
function newUid(): string {
  return `${Date.now().toString(36)}-${randomBytes(6).toString('hex')}`;
}
