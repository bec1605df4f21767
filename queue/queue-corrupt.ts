/*
 * Queue entries set aside as corrupt, and what an operator (or time) does with them.
 *
 * Takes: what startup reconciliation found (queue-reconcile.ts): a spool file and/or a queue
 *   record that do not agree.
 * Gives: the kind of each entry, which decides what may be done with it —
 *   unacknowledged  a spool file without a queue record. The record is committed before the 250
 *                   is sent (queue/index.ts `accept`), and a notice's record goes in the same
 *                   transaction as the outcome that wrote it, so such a file belongs to a DATA
 *                   transfer (or a notice) that never completed: the sender got no 250 and kept
 *                   its copy. Nothing to deliver (no envelope); removed after
 *                   `queue.leftoverRetention`, or at once by an operator.
 *   damaged         a record (the message was acknowledged) whose spool file is missing or not
 *                   the size recorded. It is kept until an operator decides: requeue it once a
 *                   file of the recorded size is back (restored from a backup, say), or delete it.
 *                   Also a file without a record when the queue database itself is new (lost,
 *                   deleted): then records were lost, the file may hold acknowledged mail, and it
 *                   is never removed by itself.
 *   The listing, one entry's details (record, recipients, file, its first header lines), the
 *   requeue check, and the write operations for both.
 * Touches: the queue database (messages.corrupt_kind, messages.set_aside_at); the spool's
 *   corrupt/ folder (through queue/index.ts).
 * Settings: queue.leftoverRetention.
 */
import type Database from 'better-sqlite3';

export type CorruptKind = 'unacknowledged' | 'damaged';

export const CORRUPT_COLUMNS = ['corrupt_kind TEXT', 'set_aside_at INTEGER'];

/** A record's and a file's view of one queue id; null where that side is missing. */
export interface Sides {
  recordSize: number | null;
  fileSize: number | null;
  /** The queue database was made anew at this start: a missing record may have been lost. */
  newDatabase?: boolean;
}

/** Whether the record and the file disagree, and how; null when they agree (or neither exists). */
export function classify(s: Sides): { kind: CorruptKind; reason: string } | null {
  if (s.recordSize === null) {
    if (s.fileSize === null) return null;
    if (s.newDatabase) return { kind: 'damaged', reason: 'spool file without a queue record, and the queue database is new: its record was lost (it may have been acknowledged)' };
    return { kind: 'unacknowledged', reason: 'spool file without a queue record: never acknowledged (no 250 was sent)' };
  }
  if (s.fileSize === null) return { kind: 'damaged', reason: 'spool file missing' };
  if (s.fileSize !== s.recordSize) return { kind: 'damaged', reason: `spool file is ${s.fileSize} bytes, the record says ${s.recordSize}` };
  return null;
}

/** Why an entry with `openRecipients` still to deliver cannot go back into the queue as it is, or null when it can. */
export function requeueProblem(kind: CorruptKind, s: Sides, openRecipients: number): string | null {
  if (kind === 'unacknowledged') {
    return 'never acknowledged: no envelope was recorded, so there is nothing to deliver (the sender got no 250 and keeps its copy); delete it, or leave it to queue.leftoverRetention';
  }
  if (openRecipients === 0) return 'no recipient is left to deliver to (its record was lost, or all were done): `show` its headers, resend it by hand if needed, then delete it';
  if (s.fileSize === null) return 'its spool file is still missing: put the message file back (in the spool or its corrupt/ folder) first, or delete the entry';
  if (s.fileSize !== s.recordSize) return `its spool file is ${s.fileSize} bytes and the record says ${s.recordSize}: it cannot be delivered as it is; restore the whole file, or delete the entry`;
  return null;
}

export interface CorruptEntry {
  id: string;
  kind: CorruptKind;
  note: string | null;
  set_aside_at: number | null;
  received_at: number;
  sender: string;
  size: number;
  /** Recipients still to deliver (queued or held); 0 for an unacknowledged file. */
  recipients: number;
}

const SELECT = `SELECT m.id, m.corrupt_kind AS kind, m.note, m.set_aside_at, m.received_at, m.sender, m.size,
  (SELECT COUNT(*) FROM recipients r WHERE r.message_id = m.id AND r.state IN ('queued', 'held')) AS recipients
  FROM messages m WHERE m.state = 'corrupt'`;

/** Entries set aside as corrupt, oldest first. */
export function readCorrupt(db: Database.Database): CorruptEntry[] {
  return db.prepare(`${SELECT} ORDER BY m.id`).all() as CorruptEntry[];
}

export function readCorruptEntry(db: Database.Database, id: string): CorruptEntry | undefined {
  return db.prepare(`${SELECT} AND m.id = ?`).get(id) as CorruptEntry | undefined;
}

/** Unacknowledged leftovers set aside before `before` (ms). */
export function expiredLeftovers(db: Database.Database, before: number): string[] {
  return (db.prepare(`SELECT id FROM messages WHERE state = 'corrupt' AND corrupt_kind = 'unacknowledged' AND set_aside_at < ?`)
    .all(before) as Array<{ id: string }>).map((r) => r.id);
}

/** Brings corrupt rows from before the kinds were recorded up to date. */
export function migrateCorrupt(db: Database.Database, columns: string[]): void {
  for (const c of CORRUPT_COLUMNS) if (!columns.includes(c.split(' ')[0])) db.exec(`ALTER TABLE messages ADD COLUMN ${c}`);
  // Without a sender or trace of its own, a corrupt row was made for a file that had no record.
  db.exec(`UPDATE messages SET corrupt_kind = CASE WHEN sender = '' AND trace = '' AND note LIKE 'spool file without a queue record%'
    THEN 'unacknowledged' ELSE 'damaged' END, set_aside_at = COALESCE(set_aside_at, received_at)
    WHERE state = 'corrupt' AND corrupt_kind IS NULL`);
}

export type CorruptWriteOp =
  | { op: 'setCorrupt'; id: string; note: string; at: number }
  | { op: 'insertCorrupt'; id: string; kind: CorruptKind; size: number; receivedAt: number; note: string; at: number }
  | { op: 'requeueCorrupt'; id: string; now: number }
  | { op: 'deleteCorrupt'; id: string };

export function createCorruptWriter(db: Database.Database): (op: CorruptWriteOp) => unknown {
  const s = {
    setCorrupt: db.prepare(`UPDATE messages SET state = 'corrupt', corrupt_kind = 'damaged', note = ?, set_aside_at = ? WHERE id = ?`),
    insertCorrupt: db.prepare(`INSERT OR IGNORE INTO messages (id, size, sender, received_at, trace, state, note, corrupt_kind, set_aside_at)
      VALUES (?, ?, '', ?, '', 'corrupt', ?, ?, ?)`),
    requeue: db.prepare(`UPDATE messages SET state = 'active', corrupt_kind = NULL, set_aside_at = NULL,
      note = 'requeued by an operator after: ' || COALESCE(note, '') WHERE id = ? AND state = 'corrupt' AND corrupt_kind = 'damaged'`),
    due: db.prepare(`UPDATE recipients SET next_attempt = ?, updated_at = ? WHERE message_id = ? AND state = 'queued' RETURNING *`),
    deleteRecipients: db.prepare(`DELETE FROM recipients WHERE message_id = ?`),
    deleteMessage: db.prepare(`DELETE FROM messages WHERE id = ? AND state = 'corrupt'`),
  };
  return (op) => {
    switch (op.op) {
      case 'setCorrupt':
        return s.setCorrupt.run(op.note, op.at, op.id).changes;
      case 'insertCorrupt':
        return s.insertCorrupt.run(op.id, op.size, op.receivedAt, op.note, op.kind, op.at).changes;
      case 'requeueCorrupt':
        // The queued recipients come back due now; held ones stay held.
        return s.requeue.run(op.id).changes === 0 ? null : s.due.all(op.now, op.now, op.id);
      case 'deleteCorrupt': {
        const removed = s.deleteMessage.run(op.id).changes;
        if (removed > 0) s.deleteRecipients.run(op.id);
        return removed > 0;
      }
    }
  };
}
