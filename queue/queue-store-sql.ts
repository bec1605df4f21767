/*
 * The queue database's schema, row types and write operations: messages and their recipients,
 * the operator's recipient commands (hold, purge, release), and — composed from their own files —
 * the entries set aside as corrupt (queue-corrupt.ts), the records (queue-records-sql.ts) and
 * every attempt of every recipient (queue-attempts-sql.ts).
 *
 * Writes are data (`WriteOp`), applied by `createWriter` on the connection that owns writing (in
 * the store's worker thread, queue-store-worker.ts), so the main thread never waits for a WAL
 * fsync. `createReader` gives the main thread's reads; the others here are the CLI's, which opens
 * the database read-only.
 */
import type Database from 'better-sqlite3';
import { ATTEMPTS_SCHEMA, prepareAttempts } from './queue-attempts-sql.js';
import { DEPTH_INDEX } from './queue-depth.js';
import { createCorruptWriter, migrateCorrupt, type CorruptKind, type CorruptWriteOp } from './queue-corrupt.js';
import { createRecordsWriter, migrateRecords, RECORDS_SCHEMA, type RecordsWriteOp } from './queue-records-sql.js';
import { CLUSTER_STATE_SCHEMA, createClusterStateWriter, type ClusterStateWriteOp } from './cluster/cluster-state-sql.js';
import { createSuppressionWriter, migrateSuppression, prepareBounceSuppression, SUPPRESSION_SCHEMA, type SuppressionWriteOp } from './queue-suppression-sql.js';

/** purged: removed by an operator, no notice sent; transferred: handed to a cluster peer by a drain (the peer's now, no notice). */
export type RecipientState = 'queued' | 'held' | 'delivered' | 'bounced' | 'purged' | 'transferred';

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
  /** Set: the engines quarantined the message (the reason); its recipients start held. */
  quarantine?: string | null;
  /** Header fields of the message itself left out at delivery (queue-headers.ts rule). */
  strip?: string | null;
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
  /** Set while state is 'corrupt' (queue-corrupt.ts). */
  corrupt_kind: CorruptKind | null;
  set_aside_at: number | null;
  quarantine: string | null;
  strip: string | null;
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
  /** Set when bounced: what kind of failure (queue-classify.ts), or 'suppressed' (stopped by the suppression list). */
  bounce_class: string | null;
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
  /** The bounce's class (queue-classify.ts), kept with the outcome. */
  bounceClass?: string | null;
  /** Set on a hard bounce to suppress: the tenant's entry for the address is written with the outcome. */
  suppress?: { reason: string; expiresAt: number | null } | null;
  /** The outbound session the attempt went over (its transcript id), kept with the attempt's row. */
  session?: string | null;
}

/** Which recipients an operator command applies to: one message, a tenant's, some domains' (all given ones must match). */
export interface RecipientSelector {
  messageId?: string;
  tenant?: string;
  domains?: string[];
}

export type WriteOp =
  | { op: 'insertMessage'; message: NewMessage }
  /** `fromHeld`: held recipients take the update too (an operator's bounce); else only queued ones do. */
  | { op: 'updateRecipients'; messageId: string; updates: RecipientUpdate[]; now: number; fromHeld?: boolean }
  /** Queued recipients due now (an operator's flush); gives their rows, to be scheduled. */
  | { op: 'flushRecipients'; select: RecipientSelector; now: number }
  | { op: 'deleteMessage'; id: string }
  | { op: 'holdRecipients'; select: RecipientSelector; now: number }
  | { op: 'purgeRecipients'; select: RecipientSelector; now: number; reason: string }
  | { op: 'release'; tenant: string | null; domain: string | null; now: number }
  | { op: 'releaseMessage'; id: string; now: number }
  /** Recipients a peer took (its 250): final, only those still queued; `reply` names the peer and its reply. */
  | { op: 'transferRecipients'; messageId: string; ids: number[]; host: string; reply: string; now: number }
  /** Written in a durable batch so that every earlier commit is on the device (the spool journal's segments may then go). */
  | { op: 'journalSettled'; at: number }
  | RecordsWriteOp
  | CorruptWriteOp
  | ClusterStateWriteOp
  | SuppressionWriteOp;

export const SCHEMA = RECORDS_SCHEMA + CLUSTER_STATE_SCHEMA + SUPPRESSION_SCHEMA + ATTEMPTS_SCHEMA + `
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
  note TEXT,
  quarantine TEXT,
  strip TEXT,
  corrupt_kind TEXT,
  set_aside_at INTEGER
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
  bounce_class TEXT,
  updated_at INTEGER NOT NULL,
  PRIMARY KEY (message_id, id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS journal_settled (k INTEGER PRIMARY KEY CHECK (k = 1), at INTEGER NOT NULL);
`;

/** Brings a queue database made by an earlier version up to this schema. */
export function migrate(db: Database.Database): void {
  const columns = (db.prepare(`PRAGMA table_info(messages)`).all() as Array<{ name: string }>).map((c) => c.name);
  if (!columns.includes('quarantine')) db.exec(`ALTER TABLE messages ADD COLUMN quarantine TEXT`);
  if (!columns.includes('strip')) db.exec(`ALTER TABLE messages ADD COLUMN strip TEXT`);
  migrateCorrupt(db, columns);
  migrateRecords(db);
  migrateSuppression(db);
  db.exec(DEPTH_INDEX);
}

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

/** Prepares the write statements on `db` and returns the function that applies one operation. */
export function createWriter(db: Database.Database): (op: WriteOp) => unknown {
  const s = {
    insertMessage: db.prepare(`INSERT INTO messages (id, size, sender, received_at, trace, ret, envid, smtputf8, body8bit, client, helo, auth_user, listener, kind, quarantine, strip)
      VALUES (@id, @size, @sender, @receivedAt, @trace, @ret, @envid, @smtputf8, @body8bit, @client, @helo, @authUser, @listener, @kind, @quarantine, @strip)`),
    insertRecipient: db.prepare(`INSERT INTO recipients (message_id, id, tenant, address, domain, orcpt, notify, state, next_attempt, last_reply, updated_at)
      VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`),
    updateRecipient: db.prepare(`UPDATE recipients SET state = @state, next_attempt = @nextAttempt,
      attempts = attempts + @attempted, first_attempt = COALESCE(first_attempt, CASE WHEN @attempted = 1 THEN @now END),
      last_code = COALESCE(@code, last_code), last_status = COALESCE(@status, last_status),
      last_reply = COALESCE(@reply, last_reply), last_host = COALESCE(@host, last_host),
      warned = MAX(warned, @warned), owed = @owed, bounce_class = COALESCE(@bounceClass, bounce_class), updated_at = @now
      WHERE message_id = @messageId AND id = @id AND (state = 'queued' OR (@fromHeld = 1 AND state = 'held'))`),
    openCount: db.prepare(`SELECT COUNT(*) AS n FROM recipients WHERE message_id = ? AND state IN ('queued', 'held')`),
    markDone: db.prepare(`UPDATE messages SET state = 'done' WHERE id = ? AND state = 'active'`),
    deleteRecipients: db.prepare(`DELETE FROM recipients WHERE message_id = ?`),
    deleteMessage: db.prepare(`DELETE FROM messages WHERE id = ?`),
    release: db.prepare(`UPDATE recipients SET state = 'queued', next_attempt = ?, updated_at = ?
      WHERE state = 'held' AND (? IS NULL OR tenant = ?) AND (? IS NULL OR domain = ?)
      AND message_id NOT IN (SELECT id FROM messages WHERE quarantine IS NOT NULL) RETURNING *`),
    releaseMessage: db.prepare(`UPDATE recipients SET state = 'queued', next_attempt = ?, updated_at = ?
      WHERE message_id = ? AND state = 'held' RETURNING *`),
    transfer: db.prepare(`UPDATE recipients SET state = 'transferred', last_code = 250, last_status = '2.0.0', last_reply = ?, last_host = ?, updated_at = ?
      WHERE message_id = ? AND id = ? AND state = 'queued'`),
    journalSettled: db.prepare(`INSERT INTO journal_settled (k, at) VALUES (1, ?) ON CONFLICT (k) DO UPDATE SET at = excluded.at`),
    clearQuarantine: db.prepare(`UPDATE messages SET quarantine = NULL, note = 'released from quarantine: ' || quarantine WHERE id = ? AND quarantine IS NOT NULL`),
  };
  const records = createRecordsWriter(db);
  const corrupt = createCorruptWriter(db);
  const clusterState = createClusterStateWriter(db);
  const suppression = createSuppressionWriter(db);
  const suppressBounce = prepareBounceSuppression(db);
  const attempts = prepareAttempts(db);
  return (op: WriteOp): unknown => {
    switch (op.op) {
      case 'clusterPosition':
      case 'outboxAdd':
      case 'outboxDelete':
        return clusterState(op);
      case 'recordScans':
      case 'appendScanRuns':
      case 'pruneScans':
      case 'saveEngineStats':
      case 'engineEvent':
      case 'recordTranscript':
      case 'pruneTranscripts':
      case 'egressEvent':
      case 'undoEgressEvent':
      case 'undoEgressEventByUid':
        return records(op);
      case 'suppressionAdd':
      case 'suppressionRemove':
      case 'suppressionPrune':
        return suppression(op);
      case 'deleteCorrupt':
        attempts.remove(op.id);
        return corrupt(op);
      case 'setCorrupt':
      case 'insertCorrupt':
      case 'requeueCorrupt':
        return corrupt(op);
      case 'insertMessage': {
        const { recipients, ...row } = op.message;
        const quarantine = row.quarantine ?? null;
        s.insertMessage.run({ ...row, quarantine, strip: row.strip ?? null, smtputf8: row.smtputf8 ? 1 : 0, body8bit: row.body8bit ? 1 : 0 });
        const state = quarantine === null ? 'queued' : 'held';
        const reply = quarantine === null ? null : `quarantined: ${quarantine}`;
        recipients.forEach((r, i) => s.insertRecipient.run(row.id, i, r.tenant, r.address, r.domain, r.orcpt, r.notify, state, row.receivedAt, reply, row.receivedAt));
        return recipients.map((_, i) => i);
      }
      case 'updateRecipients': {
        for (const u of op.updates) {
          const { changes } = s.updateRecipient.run({
            messageId: op.messageId, id: u.id, state: u.state, nextAttempt: u.nextAttempt, attempted: u.attempted ? 1 : 0, now: op.now,
            code: u.code, status: u.status, reply: u.reply, host: u.host, warned: u.warned ? 1 : 0, owed: u.owed ?? null,
            bounceClass: u.bounceClass ?? null, fromHeld: op.fromHeld ? 1 : 0,
          });
          if (changes > 0 && u.attempted) {
            attempts.add({ message_id: op.messageId, recipient: u.id, at: op.now, code: u.code, status: u.status, reply: u.reply, host: u.host, session: u.session ?? null });
          }
          // With the outcome, in its transaction: a hard bounce is never recorded without its suppression.
          if (changes > 0 && u.state === 'bounced' && u.suppress && u.bounceClass) {
            suppressBounce(op.messageId, u.id, u.bounceClass, u.suppress.reason, op.now, u.suppress.expiresAt);
          }
        }
        const { n } = s.openCount.get(op.messageId) as { n: number };
        if (n === 0) s.markDone.run(op.messageId);
        return n === 0;
      }
      case 'deleteMessage':
        attempts.remove(op.id);
        s.deleteRecipients.run(op.id);
        s.deleteMessage.run(op.id);
        return null;
      case 'holdRecipients': {
        const w = where(op.select);
        return db.prepare(`UPDATE recipients SET state = 'held', last_reply = 'held by an operator', updated_at = ?
          WHERE state = 'queued' AND ${w.sql} RETURNING message_id, id`).all(op.now, ...w.params).length;
      }
      case 'flushRecipients': {
        const w = where(op.select);
        return db.prepare(`UPDATE recipients SET next_attempt = ?, updated_at = ? WHERE state = 'queued' AND ${w.sql} RETURNING *`).all(op.now, op.now, ...w.params);
      }
      case 'purgeRecipients': {
        const w = where(op.select);
        const rows = db.prepare(`UPDATE recipients SET state = 'purged', last_reply = ?, updated_at = ?
          WHERE state IN ('queued', 'held') AND ${w.sql} RETURNING message_id`).all(op.reason, op.now, ...w.params) as Array<{ message_id: string }>;
        for (const id of new Set(rows.map((r) => r.message_id))) {
          if ((s.openCount.get(id) as { n: number }).n === 0) s.markDone.run(id);
        }
        return rows.length;
      }
      case 'transferRecipients': {
        let n = 0;
        for (const id of op.ids) n += s.transfer.run(op.reply, op.host, op.now, op.messageId, id).changes;
        if ((s.openCount.get(op.messageId) as { n: number }).n === 0) s.markDone.run(op.messageId);
        return n;
      }
      case 'journalSettled':
        s.journalSettled.run(op.at);
        return null;
      case 'release':
        return s.release.all(op.now, op.now, op.tenant, op.tenant, op.domain, op.domain);
      case 'releaseMessage':
        s.clearQuarantine.run(op.id);
        return s.releaseMessage.all(op.now, op.now, op.id);
    }
  };
}

export interface QueueReader {
  message(id: string): MessageRow | undefined;
  recipientsOf(id: string): RecipientRow[];
  openRecipients(): RecipientRow[];
  doneMessages(limit: number): string[];
  allMessages(): Array<{ id: string; state: MessageRow['state']; size: number }>;
  /** Recipients of messages still in the queue, by state (queued, held, ...). */
  openCounts(): Record<string, number>;
}

/** Prepares the main thread's read statements on `db` (the queue's own; the records have theirs). */
export function createReader(db: Database.Database): QueueReader {
  const s = {
    message: db.prepare(`SELECT * FROM messages WHERE id = ?`),
    recipientsOf: db.prepare(`SELECT * FROM recipients WHERE message_id = ? ORDER BY id`),
    openRecipients: db.prepare(`SELECT r.* FROM recipients r JOIN messages m ON m.id = r.message_id
      WHERE r.state = 'queued' AND m.state = 'active' ORDER BY r.message_id, r.id`),
    doneMessages: db.prepare(`SELECT id FROM messages WHERE state = 'done' LIMIT ?`),
    allIds: db.prepare(`SELECT id, state, size FROM messages`),
    openCounts: db.prepare(`SELECT r.state, count(*) AS n FROM recipients r JOIN messages m ON m.id = r.message_id
      WHERE m.state = 'active' AND r.state IN ('queued', 'held') GROUP BY r.state`),
  };
  return {
    message: (id) => s.message.get(id) as MessageRow | undefined,
    recipientsOf: (id) => s.recipientsOf.all(id) as RecipientRow[],
    openRecipients: () => s.openRecipients.all() as RecipientRow[],
    doneMessages: (limit) => (s.doneMessages.all(limit) as { id: string }[]).map((r) => r.id),
    allMessages: () => s.allIds.all() as Array<{ id: string; state: MessageRow['state']; size: number }>,
    openCounts: () => Object.fromEntries((s.openCounts.all() as Array<{ state: string; n: number }>).map((r) => [r.state, r.n])),
  };
}

/** Opens a connection with the queue's settings (WAL; FULL sync when durability is asked for). */
export function configure(db: Database.Database, fsync: boolean): void {
  // A new database gets 512-byte pages, SQLite's smallest: a commit writes each page it changed
  // whole into the WAL, and most commits change a few small rows (a 2 KB message cost the device
  // about a fifth less than with 1 KB pages, measured with npm run bench; no effect on a database
  // that exists already).
  db.pragma('page_size = 512');
  db.pragma('journal_mode = WAL');
  db.pragma(`synchronous = ${fsync ? 'FULL' : 'OFF'}`);
  db.pragma('busy_timeout = 5000');
}

/**
 * What `ichidan queue` shows: recipients of messages still in the queue per tenant and state, the
 * bounced ones per class (none in a database made before bounces were classified), and the
 * entries set aside as corrupt.
 */
export function queueStatus(db: Database.Database): {
  counts: Array<{ tenant: string; state: RecipientState; n: number }>;
  bounced: Array<{ tenant: string; class: string; n: number }>;
  corrupt: Array<{ id: string; note: string | null }>;
} {
  const hasClass = (db.prepare(`PRAGMA table_info(recipients)`).all() as Array<{ name: string }>).some((c) => c.name === 'bounce_class');
  return {
    counts: db.prepare(`SELECT r.tenant, r.state, COUNT(*) AS n FROM recipients r JOIN messages m ON m.id = r.message_id
      WHERE m.state = 'active' GROUP BY r.tenant, r.state ORDER BY r.tenant, r.state`).all() as Array<{ tenant: string; state: RecipientState; n: number }>,
    bounced: hasClass ? db.prepare(`SELECT r.tenant, COALESCE(r.bounce_class, 'other') AS class, COUNT(*) AS n FROM recipients r JOIN messages m ON m.id = r.message_id
      WHERE m.state = 'active' AND r.state = 'bounced' GROUP BY r.tenant, class ORDER BY r.tenant, class`).all() as Array<{ tenant: string; class: string; n: number }> : [],
    corrupt: db.prepare(`SELECT id, note FROM messages WHERE state = 'corrupt' ORDER BY id`).all() as Array<{ id: string; note: string | null }>,
  };
}

export interface QuarantinedRow {
  id: string;
  received_at: number;
  sender: string;
  size: number;
  quarantine: string;
  recipients: number;
}

/** Messages in quarantine (held by the engines' verdict, not yet released). */
export function readQuarantine(db: Database.Database): QuarantinedRow[] {
  return db.prepare(`SELECT m.id, m.received_at, m.sender, m.size, m.quarantine, COUNT(*) AS recipients
    FROM messages m JOIN recipients r ON r.message_id = m.id
    WHERE m.quarantine IS NOT NULL AND m.state = 'active' AND r.state = 'held'
    GROUP BY m.id ORDER BY m.id`).all() as QuarantinedRow[];
}

/** The queued and held recipients an operator command selects (messages set aside as corrupt excepted). */
export function selectOpenRecipients(db: Database.Database, select: RecipientSelector): RecipientRow[] {
  const w = where(select);
  return db.prepare(`SELECT * FROM recipients WHERE state IN ('queued', 'held') AND ${w.sql} ORDER BY message_id, id`).all(...w.params) as RecipientRow[];
}

/** Destination domains with recipients still queued or held (for commands by site). */
export function openDomains(db: Database.Database): string[] {
  return (db.prepare(`SELECT DISTINCT domain FROM recipients WHERE state IN ('queued', 'held')`).all() as Array<{ domain: string }>).map((r) => r.domain);
}
