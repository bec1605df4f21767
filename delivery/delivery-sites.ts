/*
 * Destination sites: which domains share one set of limits.
 *
 * A site is named by the first of these that applies to a recipient domain:
 *   1. a `delivery.sites` entry whose `domains` patterns match the domain (no lookup needed);
 *   2. a `delivery.sites` entry whose `mx` patterns match one of the domain's mail hosts (its MX
 *      hosts, or a static route's host) — all the domains a provider hosts behind `*.google.com`
 *      are one site;
 *   3. otherwise the set of mail hosts itself: "mx:" and the sorted host names (two domains with
 *      the same MX hosts are one site), or "route:host:port" for a static route.
 * Domains whose route is a hold or a failure (null MX, NXDOMAIN, a failed lookup) get a site of
 * their own ("domain:" and the name), which delivery answers without connecting anywhere.
 *
 * Route decisions are cached for a short while, so placing a job under its site and delivering it
 * costs one lookup; failures are kept only briefly, so a fixed DNS problem is seen soon.
 * Settings: delivery.site (the default limits), delivery.sites (named sites and their limits).
 */
import type { EgressConfig } from './delivery-config.js';
import type { SiteRef } from '../base/base-site.js';
import type { RouteDecision, Router } from './delivery-route.js';

/** A site as delivery knows it: the scheduler's SiteRef and what the pools need besides. */
export interface DeliverySite extends SiteRef {
  /** What the scheduler does not need but the pools do. */
  messagesPerConnection: number;
  idleTimeout: number;
  slowReply: number;
}

const ROUTE_TTL_MS = 60_000;
const FAILED_ROUTE_TTL_MS = 5_000;
const MAX_CACHED = 100_000;

/** "*.example.com" matches any name under example.com; anything else matches itself (case-insensitive). */
export function hostMatches(pattern: string, name: string): boolean {
  const p = pattern.toLowerCase().replace(/\.$/, '');
  const n = name.toLowerCase().replace(/\.$/, '');
  if (p.startsWith('*.')) return n.endsWith(p.slice(1)) && n.length > p.length - 1;
  return p === n;
}

/** Names the site of each destination domain (cached route decisions) and gives a site's limits by its key. */
export class SiteDirectory {
  readonly #cache = new Map<string, { decision: RouteDecision; site: DeliverySite; expires: number }>();
  readonly #pending = new Map<string, Promise<{ decision: RouteDecision; site: DeliverySite }>>();
  /** Mail host addresses seen in routes → their host name and site (what the proxy knows of an address). */
  readonly #byAddress = new Map<string, { name: string; site: DeliverySite }>();

  constructor(private readonly config: EgressConfig, private readonly router: Router, private readonly now: () => number = Date.now) {}

  /** The limits of a site by its key (named sites have their own, the rest the defaults). */
  limits(key: string): DeliverySite {
    const base = this.config.delivery.site;
    const named = key.startsWith('site:') ? this.config.delivery.sites[key.slice(5)] : undefined;
    const pick = <K extends keyof typeof base>(k: K) => (named?.[k] ?? base[k]) as (typeof base)[K];
    return {
      key,
      limits: { maxConnections: pick('maxConnections'), initialConnections: pick('initialConnections'), messageRate: pick('messageRate') },
      messagesPerConnection: pick('messagesPerConnection'),
      idleTimeout: pick('idleTimeout'),
      slowReply: pick('slowReply'),
    };
  }

  /** The site of a domain, at once when its route is cached. */
  site(domain: string): DeliverySite | Promise<DeliverySite> {
    const hit = this.#fresh(domain);
    if (hit) return hit.site;
    return this.route(domain).then((r) => r.site);
  }

  /** The route decision and site of a domain (cached). */
  async route(domain: string): Promise<{ decision: RouteDecision; site: DeliverySite }> {
    const hit = this.#fresh(domain);
    if (hit) return hit;
    let pending = this.#pending.get(domain);
    if (!pending) {
      pending = this.router.route(domain).then((decision) => {
        const site = this.limits(this.#name(domain, decision));
        if (this.#cache.size >= MAX_CACHED) {
          this.#cache.clear();
          this.#byAddress.clear();
        }
        this.#cache.set(domain, { decision, site, expires: this.now() + (decision.kind === 'hops' ? ROUTE_TTL_MS : FAILED_ROUTE_TTL_MS) });
        if (decision.kind === 'hops') {
          for (const hop of decision.hops) for (const a of hop.addresses) this.#byAddress.set(`${a}|${hop.port}`, { name: hop.name, site });
        }
        return { decision, site };
      }).finally(() => this.#pending.delete(domain));
      this.#pending.set(domain, pending);
    }
    return pending;
  }

  /** The mail host name and site an address:port was last seen under in a route, if any. */
  byAddress(address: string, port: number): { name: string; site: DeliverySite } | undefined {
    return this.#byAddress.get(`${address}|${port}`);
  }

  #fresh(domain: string): { decision: RouteDecision; site: DeliverySite } | undefined {
    const hit = this.#cache.get(domain);
    if (hit && hit.expires > this.now()) return hit;
    return undefined;
  }

  #name(domain: string, decision: RouteDecision): string {
    const sites = Object.entries(this.config.delivery.sites);
    for (const [name, s] of sites) if (s.domains.some((p) => hostMatches(p, domain))) return `site:${name}`;
    if (decision.kind !== 'hops') return `domain:${domain}`;
    const hosts = decision.hops.map((h) => h.name.toLowerCase());
    for (const [name, s] of sites) if (s.mx.some((p) => hosts.some((h) => hostMatches(p, h)))) return `site:${name}`;
    if (decision.via === 'route') return `route:${decision.hops[0].name}:${decision.hops[0].port}`;
    return `mx:${[...new Set(hosts)].sort().join(',')}`;
  }
}
