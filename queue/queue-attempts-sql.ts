/*
 * Every delivery attempt of every recipient, as one row of `attempts` in the queue database: when,
 * the reply that decided it, the host that gave it and the outbound session (transcript id) it
 * went over — what `ichidan queue show` and GET /v1/queue/messages/ID list. The recipient row
 * keeps only the last of them (queue-store-sql.ts).
 *
 * Written by the queue's writer (queue-store-sql.ts `updateRecipients`) in the transaction that
 * records the outcome, only for an attempt that contacted (or tried to contact) a destination;
 * removed with the message (the sweep's `deleteMessage`). Read by queue-inspect-sql.ts.
 */
import type Database from 'better-sqlite3';

export const ATTEMPTS_SCHEMA = `
CREATE TABLE IF NOT EXISTS attempts (
  message_id TEXT NOT NULL,
  recipient INTEGER NOT NULL,
  at INTEGER NOT NULL,
  code INTEGER,
  status TEXT,
  reply TEXT,
  host TEXT,
  session TEXT
);
CREATE INDEX IF NOT EXISTS attempts_message ON attempts (message_id, at);
`;

export interface AttemptRow {
  message_id: string;
  recipient: number;
  at: number;
  code: number | null;
  status: string | null;
  reply: string | null;
  host: string | null;
  /** The outbound session's id (its transcript: `ichidan sessions show`); null when none was recorded. */
  session: string | null;
}

/** The writer's statements: one attempt added, a message's attempts removed. */
export function prepareAttempts(db: Database.Database): { add: (row: AttemptRow) => void; remove: (messageId: string) => void } {
  const insert = db.prepare(`INSERT INTO attempts (message_id, recipient, at, code, status, reply, host, session)
    VALUES (@message_id, @recipient, @at, @code, @status, @reply, @host, @session)`);
  const remove = db.prepare(`DELETE FROM attempts WHERE message_id = ?`);
  return { add: (row) => { insert.run(row); }, remove: (id) => { remove.run(id); } };
}

/** A message's attempts, oldest first (none in a database made before attempts were kept). */
export function readAttempts(db: Database.Database, messageId: string): AttemptRow[] {
  if (db.prepare(`SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'attempts'`).get() === undefined) return [];
  return db.prepare(`SELECT * FROM attempts WHERE message_id = ? ORDER BY at, rowid`).all(messageId) as AttemptRow[];
}
