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
 *
 * In a cluster (queue/cluster/) an event also has `uid`, its name on every node, and `origin`, the
 * node that took the action: another node's event is a row here too (with a local `id`, which the
 * CLI and the admin API show), written once however often it arrives (`uid` is unique), and
 * undone by its `uid` when an undo comes from elsewhere.
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
  undone_by TEXT,
  uid TEXT,
  origin TEXT
);
CREATE INDEX IF NOT EXISTS egress_events_open ON egress_events (undone_at, until);
`;

/** Adds the cluster's columns to a table made by an earlier version, and their index. */
export function migrateEgress(db: Database.Database): void {
  const columns = (db.prepare(`PRAGMA table_info(egress_events)`).all() as Array<{ name: string }>).map((c) => c.name);
  if (!columns.includes('uid')) db.exec(`ALTER TABLE egress_events ADD COLUMN uid TEXT`);
  if (!columns.includes('origin')) db.exec(`ALTER TABLE egress_events ADD COLUMN origin TEXT`);
  db.exec(`CREATE UNIQUE INDEX IF NOT EXISTS egress_events_uid ON egress_events (uid)`);
}

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
  /** The event's name across the cluster (null: written before this node shared its events). */
  uid: string | null;
  /** The node that took the action (null: this one, outside a cluster). */
  origin: string | null;
}

export type NewEgressEvent = Omit<EgressEvent, 'id' | 'undone_at' | 'undone_by' | 'uid' | 'origin'> & { uid?: string | null; origin?: string | null };

export type EgressWriteOp =
  | { op: 'egressEvent'; event: NewEgressEvent }
  | { op: 'undoEgressEvent'; id: number; now: number; by: string }
  | { op: 'undoEgressEventByUid'; uid: string; now: number; by: string };

export function createEgressWriter(db: Database.Database): (op: EgressWriteOp) => unknown {
  const insert = db.prepare(`INSERT INTO egress_events (at, kind, actor, tenant, site, source, until, reason, detail, block_id, uid, origin)
    VALUES (@at, @kind, @actor, @tenant, @site, @source, @until, @reason, @detail, @block_id, @uid, @origin) ON CONFLICT (uid) DO NOTHING`);
  const byUid = db.prepare(`SELECT id FROM egress_events WHERE uid = ?`);
  const undo = db.prepare(`UPDATE egress_events SET undone_at = ?, undone_by = ? WHERE id = ? AND undone_at IS NULL RETURNING *`);
  const undoByUid = db.prepare(`UPDATE egress_events SET undone_at = ?, undone_by = ? WHERE uid = ? AND undone_at IS NULL RETURNING *`);
  return (op) => {
    switch (op.op) {
      case 'egressEvent': {
        const row = { uid: null, origin: null, ...op.event };
        const result = insert.run(row);
        // An event that came back (a replay of the cluster's changes) keeps the row it has.
        if (result.changes === 0 && row.uid !== null) return (byUid.get(row.uid) as { id: number }).id;
        return Number(result.lastInsertRowid);
      }
      case 'undoEgressEvent':
        return undo.get(op.now, op.by, op.id) ?? null;
      case 'undoEgressEventByUid':
        return undoByUid.get(op.now, op.by, op.uid) ?? null;
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

export function readEgressEventByUid(db: Database.Database, uid: string): EgressEvent | undefined {
  return db.prepare(`SELECT * FROM egress_events WHERE uid = ?`).get(uid) as EgressEvent | undefined;
}
