/*
 * Attribution of a destination's throttling: which tenant, if any, to suspend at a site, from the
 * evidence of the throttle window — each tenant's deliveries there and the throttle replies they
 * drew. A pure function; the evidence is this node's (queue-egress-control.ts) or, in a cluster,
 * every node's (queue/cluster/cluster-signals.ts).
 *
 * A tenant is blamed once the site has had `minSignals` throttle replies from at least two
 * tenants' traffic and the tenant's share of those replies — or of the site's deliveries — reaches
 * `attributionShare`; the largest such share wins.
 * Settings: delivery.throttle.minSignals, delivery.throttle.attributionShare.
 */

export interface TenantEvidence {
  /** Deliveries that left a signal (every kind). */
  deliveries: number;
  /** Of those, throttle replies. */
  throttles: number;
}

export interface Blame {
  tenant: string;
  of: 'throttle signals' | 'deliveries';
  share: number;
  /** The site's throttle replies in the window. */
  throttles: number;
}

export function blame(evidence: Map<string, TenantEvidence>, t: { minSignals: number; attributionShare: number }): Blame | null {
  let deliveries = 0;
  let throttles = 0;
  let tenants = 0;
  for (const e of evidence.values()) {
    if (e.deliveries <= 0 && e.throttles <= 0) continue;
    tenants++;
    deliveries += e.deliveries;
    throttles += e.throttles;
  }
  if (throttles < t.minSignals || tenants < 2) return null;
  let blamed: Blame | null = null;
  for (const [tenant, e] of evidence) {
    const bySignals = e.throttles / throttles;
    const byVolume = deliveries > 0 ? e.deliveries / deliveries : 0;
    const best = bySignals >= byVolume ? { of: 'throttle signals' as const, share: bySignals } : { of: 'deliveries' as const, share: byVolume };
    if (best.share >= t.attributionShare && (!blamed || best.share > blamed.share)) blamed = { tenant, ...best, throttles };
  }
  return blamed;
}
