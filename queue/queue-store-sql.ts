/*
 * The queue database's schema, row types and write operations.
 *
 * Writes are data (`WriteOp`), applied by `createWriter` on the connection that owns writing (in
 * the store's worker thread), so the main thread never waits for a WAL fsync.
 */
import type Database from 'better-sqlite3';
import type { TranscriptChunk } from '../delivery/index.js';
import type { EngineEvent, OperatorSwitch } from '../engines/engines-host.js';
import type { RunRecord, ScanRecord, StatRow } from '../engines/engines-records.js';
import { createCorruptWriter, migrateCorrupt, type CorruptKind, type CorruptWriteOp } from './queue-corrupt.js';
import { createEgressWriter, EGRESS_SCHEMA, type EgressWriteOp } from './queue-store-egress.js';

/** purged: removed by an operator, no notice sent. */
export type RecipientState = 'queued' | 'held' | 'delivered' | 'bounced' | 'purged';

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
  | { op: 'release'; tenant: string | null; domain: string | null; now: number }
  | { op: 'releaseMessage'; id: string; now: number }
  | { op: 'recordScans'; records: ScanRecord[] }
  | { op: 'saveEngineStats'; rows: StatRow[] }
  | { op: 'pruneScans'; before: number }
  | { op: 'recordTranscript'; chunk: TranscriptChunk }
  | { op: 'pruneTranscripts'; before: number }
  | { op: 'engineEvent'; event: EngineEvent }
  | { op: 'appendScanRuns'; queueId: string; runs: RunRecord[] }
  | EgressWriteOp
  | CorruptWriteOp;

export const SCHEMA = EGRESS_SCHEMA + `
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
  updated_at INTEGER NOT NULL,
  PRIMARY KEY (message_id, id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS scans (
  queue_id TEXT PRIMARY KEY,
  at INTEGER NOT NULL,
  action TEXT NOT NULL,
  reason TEXT NOT NULL,
  tenants TEXT NOT NULL,
  ms REAL NOT NULL,
  overhead_ms REAL NOT NULL,
  runs TEXT NOT NULL,
  generation INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS scans_at ON scans (at);
CREATE TABLE IF NOT EXISTS engine_events (
  at INTEGER NOT NULL,
  engine TEXT NOT NULL,
  event TEXT NOT NULL,
  from_state TEXT,
  to_state TEXT,
  reason TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS engine_events_at ON engine_events (at);
CREATE TABLE IF NOT EXISTS engine_switches (
  engine TEXT PRIMARY KEY,
  reason TEXT NOT NULL,
  at INTEGER NOT NULL
) WITHOUT ROWID;
-- Outbound session transcripts. A session may carry many messages: connection_messages ties each
-- (its queue id, tenant, recipients) to the session, and each command line also names the queue id
-- of the message it was part of (NULL for greeting, EHLO, STARTTLS, RSET between messages, QUIT).
-- commands.seq counts every line of the session; lines past the size cap are counted, not stored.
CREATE TABLE IF NOT EXISTS connections (
  id TEXT PRIMARY KEY,
  started_at INTEGER NOT NULL,
  ended_at INTEGER,
  host TEXT NOT NULL,
  protocol TEXT NOT NULL,
  address TEXT NOT NULL,
  port INTEGER NOT NULL,
  local_address TEXT,
  local_port INTEGER,
  tls TEXT,
  helo TEXT NOT NULL,
  tenant TEXT,
  messages INTEGER NOT NULL,
  commands INTEGER NOT NULL,
  lines INTEGER NOT NULL,
  bytes_stored INTEGER NOT NULL,
  truncated INTEGER NOT NULL,
  ended TEXT
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS connections_started ON connections (started_at);
CREATE INDEX IF NOT EXISTS connections_host ON connections (host);
CREATE TABLE IF NOT EXISTS connection_messages (
  connection_id TEXT NOT NULL,
  n INTEGER NOT NULL,
  at INTEGER NOT NULL,
  queue_id TEXT NOT NULL,
  tenant TEXT NOT NULL,
  recipients TEXT NOT NULL,
  PRIMARY KEY (connection_id, n)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS connection_messages_queue_id ON connection_messages (queue_id);
CREATE TABLE IF NOT EXISTS commands (
  connection_id TEXT NOT NULL,
  seq INTEGER NOT NULL,
  at INTEGER NOT NULL,
  dir TEXT NOT NULL,
  queue_id TEXT,
  text TEXT NOT NULL,
  PRIMARY KEY (connection_id, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS engine_stats (
  day TEXT NOT NULL,
  engine TEXT NOT NULL,
  scanned INTEGER NOT NULL,
  detected INTEGER NOT NULL,
  detected_alone INTEGER NOT NULL,
  errors INTEGER NOT NULL,
  timeouts INTEGER NOT NULL,
  skipped INTEGER NOT NULL,
  histogram TEXT NOT NULL,
  PRIMARY KEY (day, engine)
) WITHOUT ROWID;
`;

/** Brings a queue database made by an earlier version up to this schema. */
export function migrate(db: Database.Database): void {
  const columns = (db.prepare(`PRAGMA table_info(messages)`).all() as Array<{ name: string }>).map((c) => c.name);
  if (!columns.includes('quarantine')) db.exec(`ALTER TABLE messages ADD COLUMN quarantine TEXT`);
  if (!columns.includes('strip')) db.exec(`ALTER TABLE messages ADD COLUMN strip TEXT`);
  migrateCorrupt(db, columns);
  const scanColumns = (db.prepare(`PRAGMA table_info(scans)`).all() as Array<{ name: string }>).map((c) => c.name);
  if (!scanColumns.includes('generation')) db.exec(`ALTER TABLE scans ADD COLUMN generation INTEGER NOT NULL DEFAULT 0`);
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
      warned = MAX(warned, @warned), owed = @owed, updated_at = @now WHERE message_id = @messageId AND id = @id AND state = 'queued'`),
    openCount: db.prepare(`SELECT COUNT(*) AS n FROM recipients WHERE message_id = ? AND state IN ('queued', 'held')`),
    markDone: db.prepare(`UPDATE messages SET state = 'done' WHERE id = ? AND state = 'active'`),
    deleteRecipients: db.prepare(`DELETE FROM recipients WHERE message_id = ?`),
    deleteMessage: db.prepare(`DELETE FROM messages WHERE id = ?`),
    release: db.prepare(`UPDATE recipients SET state = 'queued', next_attempt = ?, updated_at = ?
      WHERE state = 'held' AND (? IS NULL OR tenant = ?) AND (? IS NULL OR domain = ?)
      AND message_id NOT IN (SELECT id FROM messages WHERE quarantine IS NOT NULL) RETURNING *`),
    releaseMessage: db.prepare(`UPDATE recipients SET state = 'queued', next_attempt = ?, updated_at = ?
      WHERE message_id = ? AND state = 'held' RETURNING *`),
    clearQuarantine: db.prepare(`UPDATE messages SET quarantine = NULL, note = 'released from quarantine: ' || quarantine WHERE id = ? AND quarantine IS NOT NULL`),
    insertScan: db.prepare(`INSERT OR REPLACE INTO scans (queue_id, at, action, reason, tenants, ms, overhead_ms, runs, generation) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`),
    insertEvent: db.prepare(`INSERT INTO engine_events (at, engine, event, from_state, to_state, reason) VALUES (?, ?, ?, ?, ?, ?)`),
    setSwitch: db.prepare(`INSERT OR REPLACE INTO engine_switches (engine, reason, at) VALUES (?, ?, ?)`),
    clearSwitch: db.prepare(`DELETE FROM engine_switches WHERE engine = ?`),
    saveStat: db.prepare(`INSERT OR REPLACE INTO engine_stats (day, engine, scanned, detected, detected_alone, errors, timeouts, skipped, histogram)
      VALUES (@day, @engine, @scanned, @detected, @detectedAlone, @errors, @timeouts, @skipped, @histogram)`),
    pruneScans: db.prepare(`DELETE FROM scans WHERE at < ?`),
    saveConnection: db.prepare(`INSERT INTO connections (id, started_at, ended_at, host, protocol, address, port, local_address, local_port, tls, helo, tenant,
      messages, commands, lines, bytes_stored, truncated, ended)
      VALUES (@id, @startedAt, @endedAt, @host, @protocol, @address, @port, @localAddress, @localPort, @tls, @helo, @tenant,
      @messages, @commands, @lines, @bytesStored, @truncated, @ended)
      ON CONFLICT (id) DO UPDATE SET ended_at = excluded.ended_at, local_address = excluded.local_address, local_port = excluded.local_port,
      tls = excluded.tls, tenant = excluded.tenant, messages = excluded.messages, commands = excluded.commands, lines = excluded.lines,
      bytes_stored = excluded.bytes_stored, truncated = excluded.truncated, ended = excluded.ended`),
    insertConnectionMessage: db.prepare(`INSERT OR REPLACE INTO connection_messages (connection_id, n, at, queue_id, tenant, recipients) VALUES (?, ?, ?, ?, ?, ?)`),
    insertCommand: db.prepare(`INSERT OR REPLACE INTO commands (connection_id, seq, at, dir, queue_id, text) VALUES (?, ?, ?, ?, ?, ?)`),
    pruneCommands: db.prepare(`DELETE FROM commands WHERE connection_id IN (SELECT id FROM connections WHERE COALESCE(ended_at, started_at) < ?)`),
    pruneConnectionMessages: db.prepare(`DELETE FROM connection_messages WHERE connection_id IN (SELECT id FROM connections WHERE COALESCE(ended_at, started_at) < ?)`),
    pruneConnections: db.prepare(`DELETE FROM connections WHERE COALESCE(ended_at, started_at) < ?`),
    scanRuns: db.prepare(`SELECT runs FROM scans WHERE queue_id = ?`),
    setScanRuns: db.prepare(`UPDATE scans SET runs = ? WHERE queue_id = ?`),
  };
  const egress = createEgressWriter(db);
  const corrupt = createCorruptWriter(db);
  return (op: WriteOp): unknown => {
    switch (op.op) {
      case 'egressEvent':
      case 'undoEgressEvent':
      case 'holdRecipients':
      case 'purgeRecipients':
        return egress(op);
      case 'setCorrupt':
      case 'insertCorrupt':
      case 'requeueCorrupt':
      case 'deleteCorrupt':
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
      case 'release':
        return s.release.all(op.now, op.now, op.tenant, op.tenant, op.domain, op.domain);
      case 'releaseMessage':
        s.clearQuarantine.run(op.id);
        return s.releaseMessage.all(op.now, op.now, op.id);
      case 'recordScans':
        for (const r of op.records) s.insertScan.run(r.queueId, r.at, r.action, r.reason, r.tenants.join(','), r.ms, r.overheadMs, JSON.stringify(r.runs), r.generation);
        return null;
      case 'saveEngineStats':
        for (const r of op.rows) s.saveStat.run({ ...r, histogram: JSON.stringify(r.histogram) });
        return null;
      case 'appendScanRuns': {
        const row = s.scanRuns.get(op.queueId) as { runs: string } | undefined;
        if (row) s.setScanRuns.run(JSON.stringify([...(JSON.parse(row.runs) as RunRecord[]), ...op.runs]), op.queueId);
        return null;
      }
      case 'engineEvent':
        s.insertEvent.run(op.event.at, op.event.engine, op.event.event, op.event.from ?? null, op.event.to ?? null, op.event.reason);
        if (op.event.event === 'disabled') s.setSwitch.run(op.event.engine, op.event.reason, op.event.at);
        if (op.event.event === 'enabled') s.clearSwitch.run(op.event.engine);
        return null;
      case 'pruneScans':
        return s.pruneScans.run(op.before).changes;
      case 'recordTranscript': {
        const { connection: c, lines, messages } = op.chunk;
        s.saveConnection.run({ ...c, truncated: c.truncated ? 1 : 0 });
        for (const m of messages) s.insertConnectionMessage.run(c.id, m.n, m.at, m.queueId, m.tenant, m.recipients.join(','));
        for (const l of lines) s.insertCommand.run(c.id, l.seq, l.at, l.dir, l.queueId, l.text);
        return null;
      }
      case 'pruneTranscripts':
        s.pruneCommands.run(op.before);
        s.pruneConnectionMessages.run(op.before);
        return s.pruneConnections.run(op.before).changes;
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

/** Engine statistics rows from `since` (a UTC date, "2026-11-25") on, oldest first. */
export function readEngineStats(db: Database.Database, since: string): StatRow[] {
  const rows = db.prepare(`SELECT day, engine, scanned, detected, detected_alone AS detectedAlone, errors, timeouts, skipped, histogram
    FROM engine_stats WHERE day >= ? ORDER BY day, engine`).all(since) as Array<Omit<StatRow, 'histogram'> & { histogram: string }>;
  return rows.map((r) => ({ ...r, histogram: JSON.parse(r.histogram) as number[] }));
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

/** The stored scan record of one message. */
export function readScan(db: Database.Database, queueId: string): { queue_id: string; at: number; action: string; reason: string; tenants: string; ms: number; overhead_ms: number; runs: string } | undefined {
  return db.prepare(`SELECT * FROM scans WHERE queue_id = ?`).get(queueId) as never;
}

/** Engines an operator switched off, as persisted (a restart keeps them off). */
export function readSwitches(db: Database.Database): Map<string, OperatorSwitch> {
  const rows = db.prepare(`SELECT engine, reason, at FROM engine_switches`).all() as Array<{ engine: string; reason: string; at: number }>;
  return new Map(rows.map((r) => [r.engine, { reason: r.reason, at: r.at }]));
}

export function readEngineEvents(db: Database.Database, limit: number): Array<{ at: number; engine: string; event: string; from_state: string | null; to_state: string | null; reason: string }> {
  return db.prepare(`SELECT * FROM engine_events ORDER BY at DESC, rowid DESC LIMIT ?`).all(limit) as never;
}

