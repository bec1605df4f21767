/*
 * The queue database read message by message, for an operator: the messages in the queue with
 * filters (`ichidan queue list`, GET /v1/queue/messages) and everything stored about one of them
 * (`ichidan queue show`, GET /v1/queue/messages/ID): its row, its recipients, every attempt
 * (queue-attempts-sql.ts), its scan record and the outbound sessions that carried it or were
 * opened for it (queue-records-transcripts.ts).
 *
 * Takes: a database connection (the daemon's, or the CLI's read-only one: nothing here writes),
 *   a filter, now. Reads a database made by an earlier version too (tables it lacks read as empty).
 * Gives: rows as stored; what they mean in words is queue-why.ts's, the JSON shape queue-inspect.ts's.
 * A message is "in the queue" while it is active (some recipient queued or held, or just finished
 * and not swept yet) or set aside as corrupt.
 * State filter: a message matches when one of its recipients is in that state — queued (not tried
 * yet), deferred (tried, waiting for its next attempt), held, bounced, delivered, purged — or when
 * the message is quarantined or corrupt.
 */
import type Database from 'better-sqlite3';
import { readAttempts, type AttemptRow } from './queue-attempts-sql.js';
import { readScan } from './queue-records-sql.js';
import type { ConnectionRow } from './queue-records-transcripts.js';
import type { MessageRow, RecipientRow } from './queue-store-sql.js';

export const MESSAGE_STATES = ['queued', 'deferred', 'held', 'quarantined', 'bounced', 'delivered', 'purged', 'corrupt'] as const;
export type MessageStateFilter = (typeof MESSAGE_STATES)[number];

export interface MessageFilter {
  tenant?: string;
  state?: MessageStateFilter;
  /** Part of the envelope sender (case-insensitive). */
  sender?: string;
  /** Part of a recipient's address (case-insensitive). */
  recipient?: string;
  /** Received at least this many ms before `now`. */
  olderThan?: number;
  /** Received at most this many ms before `now`. */
  newerThan?: number;
  /** Recipients of these domains (a site's, as looked up by the caller). */
  domains?: string[];
  limit: number;
}

const STATE_SQL: Record<MessageStateFilter, string> = {
  queued: `EXISTS (SELECT 1 FROM recipients r WHERE r.message_id = m.id AND r.state = 'queued' AND r.attempts = 0)`,
  deferred: `EXISTS (SELECT 1 FROM recipients r WHERE r.message_id = m.id AND r.state = 'queued' AND r.attempts > 0)`,
  held: `EXISTS (SELECT 1 FROM recipients r WHERE r.message_id = m.id AND r.state = 'held')`,
  bounced: `EXISTS (SELECT 1 FROM recipients r WHERE r.message_id = m.id AND r.state = 'bounced')`,
  delivered: `EXISTS (SELECT 1 FROM recipients r WHERE r.message_id = m.id AND r.state = 'delivered')`,
  purged: `EXISTS (SELECT 1 FROM recipients r WHERE r.message_id = m.id AND r.state = 'purged')`,
  quarantined: `m.quarantine IS NOT NULL`,
  corrupt: `m.state = 'corrupt'`,
};

/** The messages in the queue that match, oldest first, each with its recipients. */
export function listMessages(db: Database.Database, filter: MessageFilter, now: number): Array<{ message: MessageRow; recipients: RecipientRow[] }> {
  const parts = [`m.state IN ('active', 'corrupt')`];
  const params: Record<string, unknown> = { limit: filter.limit };
  const recipientParts: string[] = [];
  if (filter.tenant !== undefined) { recipientParts.push('r.tenant = @tenant'); params.tenant = filter.tenant; }
  if (filter.recipient !== undefined) { recipientParts.push('instr(lower(r.address), lower(@recipient)) > 0'); params.recipient = filter.recipient; }
  if (filter.domains !== undefined) { recipientParts.push('r.domain IN (SELECT value FROM json_each(@domains))'); params.domains = JSON.stringify(filter.domains); }
  if (recipientParts.length > 0) parts.push(`EXISTS (SELECT 1 FROM recipients r WHERE r.message_id = m.id AND ${recipientParts.join(' AND ')})`);
  if (filter.sender !== undefined) { parts.push('instr(lower(m.sender), lower(@sender)) > 0'); params.sender = filter.sender; }
  if (filter.olderThan !== undefined) { parts.push('m.received_at <= @oldest'); params.oldest = now - filter.olderThan; }
  if (filter.newerThan !== undefined) { parts.push('m.received_at >= @newest'); params.newest = now - filter.newerThan; }
  if (filter.state !== undefined) parts.push(STATE_SQL[filter.state]);
  const messages = db.prepare(`SELECT m.* FROM messages m WHERE ${parts.join(' AND ')} ORDER BY m.received_at, m.id LIMIT @limit`).all(params) as MessageRow[];
  if (messages.length === 0) return [];
  const rows = db.prepare(`SELECT * FROM recipients WHERE message_id IN (SELECT value FROM json_each(?)) ORDER BY message_id, id`)
    .all(JSON.stringify(messages.map((m) => m.id))) as RecipientRow[];
  const byMessage = new Map<string, RecipientRow[]>(messages.map((m) => [m.id, []]));
  for (const r of rows) byMessage.get(r.message_id)!.push(r);
  return messages.map((message) => ({ message, recipients: byMessage.get(message.id)! }));
}

export interface ScanRow {
  queue_id: string;
  at: number;
  action: string;
  reason: string;
  tenants: string;
  ms: number;
  overhead_ms: number;
  runs: string;
}

export interface StoredMessage {
  message: MessageRow;
  recipients: RecipientRow[];
  attempts: AttemptRow[];
  scan: ScanRow | null;
  /** The outbound sessions that carried the message or were opened for it, oldest first. */
  sessions: ConnectionRow[];
}

/** Everything stored about one message in the queue; undefined when there is no such message. */
export function readMessage(db: Database.Database, id: string): StoredMessage | undefined {
  const message = db.prepare(`SELECT * FROM messages WHERE id = ?`).get(id) as MessageRow | undefined;
  if (!message) return undefined;
  return {
    message,
    recipients: db.prepare(`SELECT * FROM recipients WHERE message_id = ? ORDER BY id`).all(id) as RecipientRow[],
    attempts: readAttempts(db, id),
    scan: hasTable(db, 'scans') ? readScan(db, id) ?? null : null,
    sessions: messageSessions(db, id),
  };
}

/** The outbound sessions of one message (those that carried it, and those opened for it that failed), oldest first. */
export function messageSessions(db: Database.Database, id: string): ConnectionRow[] {
  if (!hasTable(db, 'connection_messages')) return [];
  return db.prepare(`SELECT c.* FROM connections c WHERE c.id IN (SELECT connection_id FROM connection_messages WHERE queue_id = ?)
    ORDER BY c.started_at, c.id`).all(id) as ConnectionRow[];
}

function hasTable(db: Database.Database, name: string): boolean {
  return db.prepare(`SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?`).get(name) !== undefined;
}
