/*
 * Throttle evidence counted cluster-wide, for attribution (queue-attribution.ts): each tenant's
 * deliveries at a site and the throttle replies they drew, every node's.
 *
 * No Redis round trip per delivery: each node adds up its signals per (site, tenant) in memory and
 * flushes them every heartbeat into time buckets, one hash per (site, bucket):
 *   <prefix>:{<site>}:signals:<bucket ms>:<bucket number>   fields "<tenant>:d" (deliveries), "<tenant>:t" (throttles)
 * which expire once the window has passed them. When a throttle reply arrives, the buckets of the
 * window are read in one pipeline and summed, with what this node has not flushed yet. Redis away:
 * the counts wait in memory for the next flush, and `sums` answers undefined (the control then
 * decides on this node's own evidence).
 * Settings: cluster.heartbeat, delivery.throttle.window.
 */
import type { TenantEvidence } from '../queue-attribution.js';
import type { SiteEvidence } from '../queue-egress-control.js';
import type { ClusterLink } from './cluster-link.js';

/** About this many buckets cover a window. */
const BUCKETS_PER_WINDOW = 20;

type Counts = Map<string, Map<string, TenantEvidence>>;

export class ClusterSignals implements SiteEvidence {
  #pending: Counts = new Map();
  #timer: NodeJS.Timeout | null = null;

  constructor(private readonly link: ClusterLink, private readonly window: () => number) {}

  start(): void {
    this.#timer = setInterval(() => void this.flush(), this.link.config.heartbeat);
    this.#timer.unref();
  }

  stop(): void {
    if (this.#timer) clearInterval(this.#timer);
    this.#timer = null;
  }

  note(site: string, tenant: string, throttled: boolean): void {
    add(this.#pending, site, tenant, 1, throttled ? 1 : 0);
  }

  /** Writes the counts gathered since the last flush; kept for the next one when Redis is away. */
  async flush(now = Date.now()): Promise<void> {
    if (this.#pending.size === 0) return;
    const counts = this.#pending;
    this.#pending = new Map();
    const size = bucketSize(this.window());
    const key = (site: string) => this.link.siteKey(site, 'signals', String(size), String(Math.floor(now / size)));
    let commands = 0;
    for (const tenants of counts.values()) commands += tenants.size * 2 + 1;
    const done = await this.link.call(commands, (r) => {
      const p = r.pipeline();
      for (const [site, tenants] of counts) {
        for (const [tenant, e] of tenants) {
          p.hincrby(key(site), `${tenant}:d`, e.deliveries);
          if (e.throttles > 0) p.hincrby(key(site), `${tenant}:t`, e.throttles);
        }
        p.pexpire(key(site), this.window() + 2 * size);
      }
      return p.exec();
    });
    if (done === undefined) {
      for (const [site, tenants] of counts) for (const [tenant, e] of tenants) add(this.#pending, site, tenant, e.deliveries, e.throttles);
    }
  }

  async sums(site: string, now: number, window: number): Promise<Map<string, TenantEvidence> | undefined> {
    const size = bucketSize(window);
    const first = Math.floor((now - window) / size);
    const last = Math.floor(now / size);
    const hashes = await this.link.call(last - first + 1, async (r) => {
      const p = r.pipeline();
      for (let b = first; b <= last; b++) p.hgetall(this.link.siteKey(site, 'signals', String(size), String(b)));
      const res = await p.exec();
      return (res ?? []).map(([err, h]) => {
        if (err) throw err;
        return h as Record<string, string>;
      });
    });
    if (hashes === undefined) return undefined;
    const sums: Counts = new Map();
    for (const h of hashes) {
      for (const [field, value] of Object.entries(h)) {
        const at = field.lastIndexOf(':');
        const n = Number(value);
        if (field.endsWith(':d')) add(sums, site, field.slice(0, at), n, 0);
        else add(sums, site, field.slice(0, at), 0, n);
      }
    }
    for (const [tenant, e] of this.#pending.get(site) ?? []) add(sums, site, tenant, e.deliveries, e.throttles);
    return sums.get(site) ?? new Map();
  }
}

export function bucketSize(window: number): number {
  return Math.max(1000, Math.ceil(window / BUCKETS_PER_WINDOW));
}

function add(counts: Counts, site: string, tenant: string, deliveries: number, throttles: number): void {
  let tenants = counts.get(site);
  if (!tenants) counts.set(site, (tenants = new Map()));
  const e = tenants.get(tenant);
  if (e) {
    e.deliveries += deliveries;
    e.throttles += throttles;
  } else {
    tenants.set(tenant, { deliveries, throttles });
  }
}
