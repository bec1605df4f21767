/*
 * The queue database's schema, row types and write operations.
 *
 * Writes are data (`WriteOp`), applied by `createWriter` on the connection that owns writing (in
 * the store's worker thread), so the main thread never waits for a WAL fsync.
 */
import type Database from 'better-sqlite3';

export type RecipientState = 'queued' | 'held' | 'delivered' | 'bounced';

export interface NewRecipient {
  tenant: string;
  address: string;
  domain: string;
  orcpt: string | null;
  notify: string | null;
}

export interface NewMessage {
  id: string;
  size: number;
  sender: string;
  receivedAt: number;
  /** Header lines Ichidan adds in front of the spool file (Received, ...), CRLF-terminated. */
  trace: string;
  ret: string | null;
  envid: string | null;
  smtputf8: boolean;
  body8bit: boolean;
  client: string;
  helo: string;
  authUser: string | null;
  listener: string;
  kind: 'mail' | 'dsn';
  recipients: NewRecipient[];
}

export interface MessageRow {
  id: string;
  size: number;
  sender: string;
  received_at: number;
  trace: string;
  ret: string | null;
  envid: string | null;
  smtputf8: number;
  body8bit: number;
  client: string;
  helo: string;
  auth_user: string | null;
  listener: string;
  kind: 'mail' | 'dsn';
  state: 'active' | 'done' | 'corrupt';
  note: string | null;
}

export interface RecipientRow {
  /** The recipient's number within its message (0, 1, …). */
  id: number;
  message_id: string;
  tenant: string;
  address: string;
  domain: string;
  orcpt: string | null;
  notify: string | null;
  state: RecipientState;
  attempts: number;
  next_attempt: number;
  first_attempt: number | null;
  last_code: number | null;
  last_status: string | null;
  last_reply: string | null;
  last_host: string | null;
  warned: number;
  /** 'failed' when the recipient was refused for good but its bounce could not be written yet. */
  owed: string | null;
  updated_at: number;
}

export interface RecipientUpdate {
  /** The recipient's number within its message (0, 1, …). */
  id: number;
  state: RecipientState;
  nextAttempt: number;
  code: number | null;
  status: string | null;
  reply: string | null;
  host: string | null;
  attempted: boolean;
  warned?: boolean;
  /** Set: the outcome is final but the notice is still owed (retried without contacting the destination). */
  owed?: 'failed' | null;
}
export type WriteOp =
  | { op: 'insertMessage'; message: NewMessage }
  | { op: 'updateRecipients'; messageId: string; updates: RecipientUpdate[]; now: number }
  | { op: 'deleteMessage'; id: string }
  | { op: 'setCorrupt'; id: string; note: string }
  | { op: 'insertCorrupt'; id: string; size: number; receivedAt: number; note: string }
  | { op: 'release'; tenant: string | null; domain: string | null; now: number };

export const SCHEMA = `
CREATE TABLE IF NOT EXISTS messages (
  id TEXT PRIMARY KEY,
  size INTEGER NOT NULL,
  sender TEXT NOT NULL,
  received_at INTEGER NOT NULL,
  trace TEXT NOT NULL,
  ret TEXT,
  envid TEXT,
  smtputf8 INTEGER NOT NULL DEFAULT 0,
  body8bit INTEGER NOT NULL DEFAULT 0,
  client TEXT NOT NULL DEFAULT '',
  helo TEXT NOT NULL DEFAULT '',
  auth_user TEXT,
  listener TEXT NOT NULL DEFAULT '',
  kind TEXT NOT NULL DEFAULT 'mail',
  state TEXT NOT NULL DEFAULT 'active',
  note TEXT
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS recipients (
  message_id TEXT NOT NULL,
  id INTEGER NOT NULL,
  tenant TEXT NOT NULL,
  address TEXT NOT NULL,
  domain TEXT NOT NULL,
  orcpt TEXT,
  notify TEXT,
  state TEXT NOT NULL,
  attempts INTEGER NOT NULL DEFAULT 0,
  next_attempt INTEGER NOT NULL,
  first_attempt INTEGER,
  last_code INTEGER,
  last_status TEXT,
  last_reply TEXT,
  last_host TEXT,
  warned INTEGER NOT NULL DEFAULT 0,
  owed TEXT,
  updated_at INTEGER NOT NULL,
  PRIMARY KEY (message_id, id)
) WITHOUT ROWID;
`;

/** Prepares the write statements on `db` and returns the function that applies one operation. */
export function createWriter(db: Database.Database): (op: WriteOp) => unknown {
  const s = {
    insertMessage: db.prepare(`INSERT INTO messages (id, size, sender, received_at, trace, ret, envid, smtputf8, body8bit, client, helo, auth_user, listener, kind)
      VALUES (@id, @size, @sender, @receivedAt, @trace, @ret, @envid, @smtputf8, @body8bit, @client, @helo, @authUser, @listener, @kind)`),
    insertRecipient: db.prepare(`INSERT INTO recipients (message_id, id, tenant, address, domain, orcpt, notify, state, next_attempt, updated_at)
      VALUES (?, ?, ?, ?, ?, ?, ?, 'queued', ?, ?)`),
    updateRecipient: db.prepare(`UPDATE recipients SET state = @state, next_attempt = @nextAttempt,
      attempts = attempts + @attempted, first_attempt = COALESCE(first_attempt, CASE WHEN @attempted = 1 THEN @now END),
      last_code = COALESCE(@code, last_code), last_status = COALESCE(@status, last_status),
      last_reply = COALESCE(@reply, last_reply), last_host = COALESCE(@host, last_host),
      warned = MAX(warned, @warned), owed = @owed, updated_at = @now WHERE message_id = @messageId AND id = @id`),
    openCount: db.prepare(`SELECT COUNT(*) AS n FROM recipients WHERE message_id = ? AND state IN ('queued', 'held')`),
    markDone: db.prepare(`UPDATE messages SET state = 'done' WHERE id = ? AND state = 'active'`),
    deleteRecipients: db.prepare(`DELETE FROM recipients WHERE message_id = ?`),
    deleteMessage: db.prepare(`DELETE FROM messages WHERE id = ?`),
    setCorrupt: db.prepare(`UPDATE messages SET state = 'corrupt', note = ? WHERE id = ?`),
    insertCorrupt: db.prepare(`INSERT OR IGNORE INTO messages (id, size, sender, received_at, trace, state, note) VALUES (?, ?, '', ?, '', 'corrupt', ?)`),
    release: db.prepare(`UPDATE recipients SET state = 'queued', next_attempt = ?, updated_at = ?
      WHERE state = 'held' AND (? IS NULL OR tenant = ?) AND (? IS NULL OR domain = ?) RETURNING *`),
  };
  return (op: WriteOp): unknown => {
    switch (op.op) {
      case 'insertMessage': {
        const { recipients, ...row } = op.message;
        s.insertMessage.run({ ...row, smtputf8: row.smtputf8 ? 1 : 0, body8bit: row.body8bit ? 1 : 0 });
        recipients.forEach((r, i) => s.insertRecipient.run(row.id, i, r.tenant, r.address, r.domain, r.orcpt, r.notify, row.receivedAt, row.receivedAt));
        return recipients.map((_, i) => i);
      }
      case 'updateRecipients': {
        for (const u of op.updates) {
          s.updateRecipient.run({
            messageId: op.messageId, id: u.id, state: u.state, nextAttempt: u.nextAttempt, attempted: u.attempted ? 1 : 0, now: op.now,
            code: u.code, status: u.status, reply: u.reply, host: u.host, warned: u.warned ? 1 : 0, owed: u.owed ?? null,
          });
        }
        const { n } = s.openCount.get(op.messageId) as { n: number };
        if (n === 0) s.markDone.run(op.messageId);
        return n === 0;
      }
      case 'deleteMessage':
        s.deleteRecipients.run(op.id);
        s.deleteMessage.run(op.id);
        return null;
      case 'setCorrupt':
        s.setCorrupt.run(op.note, op.id);
        return null;
      case 'insertCorrupt':
        s.insertCorrupt.run(op.id, op.size, op.receivedAt, op.note);
        return null;
      case 'release':
        return s.release.all(op.now, op.now, op.tenant, op.tenant, op.domain, op.domain);
    }
  };
}

/** Opens a connection with the queue's settings (WAL; FULL sync when durability is asked for). */
export function configure(db: Database.Database, fsync: boolean): void {
  db.pragma('journal_mode = WAL');
  db.pragma(`synchronous = ${fsync ? 'FULL' : 'OFF'}`);
  db.pragma('busy_timeout = 5000');
}

/** What `ichidan queue` shows: open recipients per tenant and state, and the entries set aside as corrupt. */
export function queueStatus(db: Database.Database): {
  counts: Array<{ tenant: string; state: RecipientState; n: number }>;
  corrupt: Array<{ id: string; note: string | null }>;
} {
  return {
    counts: db.prepare(`SELECT r.tenant, r.state, COUNT(*) AS n FROM recipients r JOIN messages m ON m.id = r.message_id
      WHERE m.state = 'active' GROUP BY r.tenant, r.state ORDER BY r.tenant, r.state`).all() as Array<{ tenant: string; state: RecipientState; n: number }>,
    corrupt: db.prepare(`SELECT id, note FROM messages WHERE state = 'corrupt' ORDER BY id`).all() as Array<{ id: string; note: string | null }>,
  };
}
