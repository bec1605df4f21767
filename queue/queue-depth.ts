/*
 * The queue's depth for the metrics: recipients queued or held per tenant and state, and when the
 * oldest of their messages arrived.
 *
 * Takes: the queue database's read connection (queue-store.ts `db`).
 * Gives: `depthReader`, a function that answers from one GROUP BY over the recipients of active
 *   messages (the messages joined by their primary key; finished recipients are swept away, so the
 *   table holds what is still owed), asked again only once `cacheMs` has passed: however often
 *   /metrics is scraped, the database is read at most once per `cacheMs`.
 */
import type Database from 'better-sqlite3';

export interface DepthRow {
  tenant: string;
  state: 'queued' | 'held';
  recipients: number;
  /** When the oldest message of these recipients arrived (ms since the epoch). */
  oldest: number;
}

export const DEPTH_CACHE_MS = 5000;

export function depthReader(db: Database.Database, cacheMs = DEPTH_CACHE_MS, clock: () => number = Date.now): () => DepthRow[] {
  const query = db.prepare(`SELECT r.tenant AS tenant, r.state AS state, count(*) AS recipients, min(m.received_at) AS oldest
    FROM recipients r JOIN messages m ON m.id = r.message_id
    WHERE m.state = 'active' AND r.state IN ('queued', 'held') GROUP BY r.tenant, r.state`);
  let readAt = -Infinity;
  let rows: DepthRow[] = [];
  return () => {
    const now = clock();
    if (now - readAt >= cacheMs) {
      rows = query.all() as DepthRow[];
      readAt = now;
    }
    return rows;
  };
}
