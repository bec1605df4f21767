/*
 * How deep the queue is, where: recipients still to be delivered (queued or held) of the messages
 * in the queue, per tenant and per destination domain — what the dashboard's history samples
 * (mta/admin/admin-history.ts) and charts over time.
 *
 * Takes: the queue database (the main thread's read connection). Gives: counts; a domain is
 * turned into its site by the caller (the egress knows the sites).
 */
import type Database from 'better-sqlite3';

export interface QueueDepth {
  tenants: Record<string, number>;
  domains: Record<string, number>;
}

export function queueDepth(db: Database.Database): QueueDepth {
  const rows = db.prepare(`SELECT r.tenant, r.domain, COUNT(*) AS n FROM recipients r JOIN messages m ON m.id = r.message_id
    WHERE m.state = 'active' AND r.state IN ('queued', 'held') GROUP BY r.tenant, r.domain`).all() as Array<{ tenant: string; domain: string; n: number }>;
  const depth: QueueDepth = { tenants: {}, domains: {} };
  for (const r of rows) {
    depth.tenants[r.tenant] = (depth.tenants[r.tenant] ?? 0) + r.n;
    depth.domains[r.domain] = (depth.domains[r.domain] ?? 0) + r.n;
  }
  return depth;
}
