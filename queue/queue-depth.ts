/*
 * The queue's depth for the metrics: recipients queued or held per tenant and state, and when the
 * oldest of their messages arrived.
 *
 * Takes: the queue database's read connection (queue-store.ts `db`).
 * Gives: `depthReader`, a function that answers from one GROUP BY over the index
 *   `recipients_by_state` (state, tenant; the table's key message_id rides along in it, so the
 *   count and the smallest queue id per group are read from the index alone), then the arrival
 *   time of each group's first message by its key: queue ids sort by arrival (base-queue-id.ts),
 *   so the smallest id is the oldest. Asked again only once `cacheMs` has passed: however often
 *   /metrics is scraped, the database is read at most once per `cacheMs`.
 *   `DEPTH_INDEX`, which migrate (queue-store-sql.ts) creates in every queue database.
 * Counts recipients of every stored message (an entry set aside as corrupt keeps its rows until
 * an operator acts on it, and counts too).
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

export const DEPTH_INDEX = `CREATE INDEX IF NOT EXISTS recipients_by_state ON recipients (state, tenant)`;

export function depthReader(db: Database.Database, cacheMs = DEPTH_CACHE_MS, clock: () => number = Date.now): () => DepthRow[] {
  const groups = db.prepare(`SELECT tenant, state, count(*) AS recipients, min(message_id) AS first
    FROM recipients INDEXED BY recipients_by_state WHERE state IN ('queued', 'held') GROUP BY state, tenant`);
  const arrived = db.prepare(`SELECT received_at FROM messages WHERE id = ?`).pluck();
  let readAt = -Infinity;
  let rows: DepthRow[] = [];
  return () => {
    const now = clock();
    if (now - readAt >= cacheMs) {
      rows = (groups.all() as Array<Omit<DepthRow, 'oldest'> & { first: string }>).map(({ first, ...g }) => ({ ...g, oldest: (arrived.get(first) as number | undefined) ?? now }));
      readAt = now;
    }
    return rows;
  };
}
