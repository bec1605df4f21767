/*
 * Where a delivery counts and leaves from, as every stage names it.
 *
 * A site is a group of destination domains that share their mail hosts (delivery/ decides which
 * domains form one); the scheduler (queue/) counts connections and messages per (site, source
 * address) pair, because that is what a destination's per-client limits see. These are the
 * shapes the two stages and the proxy exchange; nothing here has behaviour.
 */

/** A local address to deliver from; `address: null` lets the system choose. */
export interface Source {
  address: string | null;
  helo: string | null;
}

/** What the scheduler counts a site's pairs against. */
export interface SiteCapacity {
  maxConnections: number;
  initialConnections: number;
  messageRate?: { count: number; perMs: number };
}

/** A site as the scheduler knows it: its key and its capacity per source address. */
export interface SiteRef {
  key: string;
  limits: SiteCapacity;
}
