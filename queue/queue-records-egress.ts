/*
 * The egress's records in the queue database: every action taken on the delivery side — a
 * (site, source) pair paused or slowed by the egress control (queue-egress-control.ts), a tenant
 * suspended for a site, an operator's hold — as one row of `egress_events`, which an operator
 * lists and undoes. Written by the one writer thread (queue-store-worker.ts), through the records
 * store (queue-records.ts); read on the main thread and by `ichidan egress`.
 *
 * An event that blocks delivery (paused, suspended, hold) is in force while it is not undone and
 * its `until` (NULL: until lifted) is in the future; those are put back in force at startup.
 * `block_id` names the scheduler block the event installed. `detail` is JSON the event's undo
 * needs (the pair's window before it was lowered).
 */
import type Database from 'better-sqlite3';

export const EGRESS_SCHEMA = `
CREATE TABLE IF NOT EXISTS egress_events (
  id INTEGER PRIMARY KEY,
  at INTEGER NOT NULL,
  kind TEXT NOT NULL,
  actor TEXT NOT NULL,
  tenant TEXT,
  site TEXT,
  source TEXT,
  until INTEGER,
  reason TEXT NOT NULL,
  detail TEXT,
  block_id TEXT,
  undone_at INTEGER,
  undone_by TEXT
);
CREATE INDEX IF NOT EXISTS egress_events_open ON egress_events (undone_at, until);
`;

export type EgressEventKind = 'paused' | 'slowed' | 'suspended' | 'hold';

export interface EgressEvent {
  id: number;
  at: number;
  kind: EgressEventKind;
  /** 'auto' (the throttle control) or 'operator'. */
  actor: string;
  tenant: string | null;
  site: string | null;
  source: string | null;
  until: number | null;
  reason: string;
  detail: string | null;
  block_id: string | null;
  undone_at: number | null;
  undone_by: string | null;
}

export type NewEgressEvent = Omit<EgressEvent, 'id' | 'undone_at' | 'undone_by'>;

export type EgressWriteOp =
  | { op: 'egressEvent'; event: NewEgressEvent }
  | { op: 'undoEgressEvent'; id: number; now: number; by: string };

export function createEgressWriter(db: Database.Database): (op: EgressWriteOp) => unknown {
  const insert = db.prepare(`INSERT INTO egress_events (at, kind, actor, tenant, site, source, until, reason, detail, block_id)
    VALUES (@at, @kind, @actor, @tenant, @site, @source, @until, @reason, @detail, @block_id)`);
  const undo = db.prepare(`UPDATE egress_events SET undone_at = ?, undone_by = ? WHERE id = ? AND undone_at IS NULL RETURNING *`);
  return (op) => {
    switch (op.op) {
      case 'egressEvent':
        return Number(insert.run(op.event).lastInsertRowid);
      case 'undoEgressEvent':
        return undo.get(op.now, op.by, op.id) ?? null;
    }
  };
}

/** Events, newest first; `open`: only those in force now. */
export function readEgressEvents(db: Database.Database, opts: { limit: number; open?: boolean; now?: number }): EgressEvent[] {
  if (opts.open) {
    return db.prepare(`SELECT * FROM egress_events WHERE undone_at IS NULL AND kind != 'slowed' AND (until IS NULL OR until > ?)
      ORDER BY id DESC LIMIT ?`).all(opts.now ?? Date.now(), opts.limit) as EgressEvent[];
  }
  return db.prepare(`SELECT * FROM egress_events ORDER BY id DESC LIMIT ?`).all(opts.limit) as EgressEvent[];
}

export function readEgressEvent(db: Database.Database, id: number): EgressEvent | undefined {
  return db.prepare(`SELECT * FROM egress_events WHERE id = ?`).get(id) as EgressEvent | undefined;
}
