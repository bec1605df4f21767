/*
 * The egress's records in the queue database: every action taken on the delivery side — a
 * (site, source) pair paused or slowed by the throttle control, a tenant suspended for a site, an
 * operator's hold — as one row of `egress_events`, which an operator lists and undoes; and the
 * operator's recipient-level commands (hold a message, purge by message, tenant or domains).
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

/** Which recipients an operator command applies to: one message, a tenant's, some domains' (all given ones must match). */
export interface RecipientSelector {
  messageId?: string;
  tenant?: string;
  domains?: string[];
}

export type EgressWriteOp =
  | { op: 'egressEvent'; event: NewEgressEvent }
  | { op: 'undoEgressEvent'; id: number; now: number; by: string }
  | { op: 'holdRecipients'; select: RecipientSelector; now: number }
  | { op: 'purgeRecipients'; select: RecipientSelector; now: number; reason: string };

function where(select: RecipientSelector): { sql: string; params: unknown[] } {
  const parts: string[] = [];
  const params: unknown[] = [];
  if (select.messageId !== undefined) { parts.push('message_id = ?'); params.push(select.messageId); }
  if (select.tenant !== undefined) { parts.push('tenant = ?'); params.push(select.tenant); }
  if (select.domains !== undefined) { parts.push(`domain IN (SELECT value FROM json_each(?))`); params.push(JSON.stringify(select.domains)); }
  if (parts.length === 0) throw new Error('a recipient selection needs a message, a tenant or domains');
  // Entries set aside as corrupt are an operator's to requeue or delete (queue-corrupt.ts), not to hold or purge.
  parts.push(`message_id IN (SELECT id FROM messages WHERE state = 'active')`);
  return { sql: parts.join(' AND '), params };
}

export function createEgressWriter(db: Database.Database): (op: EgressWriteOp) => unknown {
  const insert = db.prepare(`INSERT INTO egress_events (at, kind, actor, tenant, site, source, until, reason, detail, block_id)
    VALUES (@at, @kind, @actor, @tenant, @site, @source, @until, @reason, @detail, @block_id)`);
  const undo = db.prepare(`UPDATE egress_events SET undone_at = ?, undone_by = ? WHERE id = ? AND undone_at IS NULL RETURNING *`);
  const openCount = db.prepare(`SELECT COUNT(*) AS n FROM recipients WHERE message_id = ? AND state IN ('queued', 'held')`);
  const markDone = db.prepare(`UPDATE messages SET state = 'done' WHERE id = ? AND state = 'active'`);
  return (op) => {
    switch (op.op) {
      case 'egressEvent':
        return Number(insert.run(op.event).lastInsertRowid);
      case 'undoEgressEvent':
        return undo.get(op.now, op.by, op.id) ?? null;
      case 'holdRecipients': {
        const w = where(op.select);
        return db.prepare(`UPDATE recipients SET state = 'held', last_reply = 'held by an operator', updated_at = ?
          WHERE state = 'queued' AND ${w.sql} RETURNING message_id, id`).all(op.now, ...w.params).length;
      }
      case 'purgeRecipients': {
        const w = where(op.select);
        const rows = db.prepare(`UPDATE recipients SET state = 'purged', last_reply = ?, updated_at = ?
          WHERE state IN ('queued', 'held') AND ${w.sql} RETURNING message_id`).all(op.reason, op.now, ...w.params) as Array<{ message_id: string }>;
        for (const id of new Set(rows.map((r) => r.message_id))) {
          if ((openCount.get(id) as { n: number }).n === 0) markDone.run(id);
        }
        return rows.length;
      }
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

/** Destination domains with recipients still queued or held (for commands by site). */
export function openDomains(db: Database.Database): string[] {
  return (db.prepare(`SELECT DISTINCT domain FROM recipients WHERE state IN ('queued', 'held')`).all() as Array<{ domain: string }>).map((r) => r.domain);
}
