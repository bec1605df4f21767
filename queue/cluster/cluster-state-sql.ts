/*
 * This node's copy of its place in the cluster's shared state (cluster-state.ts), in the queue
 * database beside the records: the last change of the stream it applied (id, version) and the
 * Redis incarnation it came from (`cluster_position`), and the changes it made while Redis was
 * away, in order, until they are published (`cluster_outbox`).
 *
 * The shared items themselves are kept where the node keeps them anyway: egress events in
 * `egress_events` (queue-records-egress.ts), engine switches in `engine_switches`
 * (queue-records-sql.ts); a node restarted without Redis runs on those.
 * Written through the queue store's one writer thread (queue-store-worker.ts).
 */
import type Database from 'better-sqlite3';
import type { Position, StateChange, StateCopy } from './cluster-state.js';

export const CLUSTER_STATE_SCHEMA = `
CREATE TABLE IF NOT EXISTS cluster_position (
  id INTEGER PRIMARY KEY CHECK (id = 1),
  last_id TEXT NOT NULL,
  version INTEGER NOT NULL,
  epoch TEXT
);
CREATE TABLE IF NOT EXISTS cluster_outbox (
  seq INTEGER PRIMARY KEY,
  change TEXT NOT NULL
);
`;

export type ClusterStateWriteOp =
  | { op: 'clusterPosition'; position: Position }
  | { op: 'outboxAdd'; change: string }
  | { op: 'outboxDelete'; seq: number };

export function createClusterStateWriter(db: Database.Database): (op: ClusterStateWriteOp) => unknown {
  const position = db.prepare(`INSERT OR REPLACE INTO cluster_position (id, last_id, version, epoch) VALUES (1, ?, ?, ?)`);
  const add = db.prepare(`INSERT INTO cluster_outbox (change) VALUES (?)`);
  const del = db.prepare(`DELETE FROM cluster_outbox WHERE seq = ?`);
  return (op) => {
    switch (op.op) {
      case 'clusterPosition':
        return position.run(op.position.lastId, op.position.version, op.position.epoch).changes;
      case 'outboxAdd':
        return Number(add.run(op.change).lastInsertRowid);
      case 'outboxDelete':
        return del.run(op.seq).changes;
    }
  };
}

/** The copy kept in the queue database (the store's writer thread writes, its main connection reads). */
export class SqliteStateCopy implements StateCopy {
  constructor(private readonly store: { readonly db: Database.Database; write(unit: ClusterStateWriteOp[]): Promise<unknown[]> }) {}

  position(): Position | null {
    const row = this.store.db.prepare(`SELECT last_id, version, epoch FROM cluster_position WHERE id = 1`).get() as { last_id: string; version: number; epoch: string | null } | undefined;
    return row ? { lastId: row.last_id, version: row.version, epoch: row.epoch } : null;
  }

  async savePosition(position: Position): Promise<void> {
    await this.store.write([{ op: 'clusterPosition', position }]);
  }

  outbox(): Array<{ seq: number; change: StateChange }> {
    const rows = this.store.db.prepare(`SELECT seq, change FROM cluster_outbox ORDER BY seq`).all() as Array<{ seq: number; change: string }>;
    return rows.map((r) => ({ seq: r.seq, change: JSON.parse(r.change) as StateChange }));
  }

  async queue(change: StateChange): Promise<void> {
    await this.store.write([{ op: 'outboxAdd', change: JSON.stringify(change) }]);
  }

  async sent(seq: number): Promise<void> {
    await this.store.write([{ op: 'outboxDelete', seq }]);
  }
}
