/*
 * The queue database (SQLite through better-sqlite3, WAL, synchronous=FULL).
 *
 * One row per accepted message (envelope, trace headers, DSN parameters) and one per recipient
 * (tenant, state, attempts, next attempt, the reply that decided its last attempt). The message
 * bytes are not here: they are in the spool file of the same id.
 *
 * Writes are batched: `enqueue(fn)` queues work and a single transaction runs everything queued
 * in the same turn of the event loop, so concurrent SMTP transactions share one WAL fsync
 * (group commit) while each caller still waits for its own durable commit.
 *
 * Recipient states: queued (waiting for its next attempt), held (kept until released),
 * delivered, bounced (permanent failure or expiry). A message whose recipients are all final is
 * marked done and swept: its spool file is removed, then its rows.
 */
import Database from 'better-sqlite3';

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
  updated_at: number;
}

export interface RecipientUpdate {
  id: number;
  state: RecipientState;
  nextAttempt: number;
  code: number | null;
  status: string | null;
  reply: string | null;
  host: string | null;
  attempted: boolean;
  warned?: boolean;
}

const SCHEMA = `
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
  id INTEGER PRIMARY KEY,
  message_id TEXT NOT NULL,
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
  updated_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS recipients_by_message ON recipients(message_id);
`;

export class QueueStore {
  readonly db: Database.Database;
  #pending: Array<{ run: () => void; resolve: () => void; reject: (e: unknown) => void }> = [];
  #flushScheduled = false;
  #lastFlush = 0;
  #stmts;

  constructor(file: string, fsync: boolean, private readonly commitWindowMs = 0) {
    this.db = new Database(file);
    this.db.pragma('journal_mode = WAL');
    this.db.pragma(`synchronous = ${fsync ? 'FULL' : 'OFF'}`);
    this.db.pragma('busy_timeout = 5000');
    this.db.exec(SCHEMA);
    this.#stmts = {
      insertMessage: this.db.prepare(`INSERT INTO messages (id, size, sender, received_at, trace, ret, envid, smtputf8, body8bit, client, helo, auth_user, listener, kind)
        VALUES (@id, @size, @sender, @receivedAt, @trace, @ret, @envid, @smtputf8, @body8bit, @client, @helo, @authUser, @listener, @kind)`),
      insertRecipient: this.db.prepare(`INSERT INTO recipients (message_id, tenant, address, domain, orcpt, notify, state, next_attempt, updated_at)
        VALUES (?, ?, ?, ?, ?, ?, 'queued', ?, ?)`),
      updateRecipient: this.db.prepare(`UPDATE recipients SET state = @state, next_attempt = @nextAttempt,
        attempts = attempts + @attempted, first_attempt = COALESCE(first_attempt, CASE WHEN @attempted = 1 THEN @now END),
        last_code = COALESCE(@code, last_code), last_status = COALESCE(@status, last_status),
        last_reply = COALESCE(@reply, last_reply), last_host = COALESCE(@host, last_host),
        warned = MAX(warned, @warned), updated_at = @now WHERE id = @id`),
      openCount: this.db.prepare(`SELECT COUNT(*) AS n FROM recipients WHERE message_id = ? AND state IN ('queued', 'held')`),
      markDone: this.db.prepare(`UPDATE messages SET state = 'done' WHERE id = ? AND state = 'active'`),
      message: this.db.prepare(`SELECT * FROM messages WHERE id = ?`),
      recipientsOf: this.db.prepare(`SELECT * FROM recipients WHERE message_id = ? ORDER BY id`),
      openRecipients: this.db.prepare(`SELECT r.* FROM recipients r JOIN messages m ON m.id = r.message_id
        WHERE r.state = 'queued' AND m.state = 'active' ORDER BY r.message_id, r.id`),
      doneMessages: this.db.prepare(`SELECT id FROM messages WHERE state = 'done' LIMIT ?`),
      deleteRecipients: this.db.prepare(`DELETE FROM recipients WHERE message_id = ?`),
      deleteMessage: this.db.prepare(`DELETE FROM messages WHERE id = ?`),
      allIds: this.db.prepare(`SELECT id, state, size FROM messages`),
      setCorrupt: this.db.prepare(`UPDATE messages SET state = 'corrupt', note = ? WHERE id = ?`),
      insertCorrupt: this.db.prepare(`INSERT OR IGNORE INTO messages (id, size, sender, received_at, trace, state, note) VALUES (?, ?, '', ?, '', 'corrupt', ?)`),
      release: this.db.prepare(`UPDATE recipients SET state = 'queued', next_attempt = ?, updated_at = ? WHERE state = 'held' AND (? IS NULL OR tenant = ?) AND (? IS NULL OR domain = ?) RETURNING *`),
      counts: this.db.prepare(`SELECT r.tenant, r.state, COUNT(*) AS n FROM recipients r JOIN messages m ON m.id = r.message_id WHERE m.state = 'active' GROUP BY r.tenant, r.state`),
      corrupt: this.db.prepare(`SELECT id, note FROM messages WHERE state = 'corrupt' ORDER BY id`),
    };
  }

  /** Runs `work` inside the next group transaction; resolves once that transaction is durable. */
  enqueue(work: () => void): Promise<void> {
    if (!this.db.open) return Promise.reject(new Error('queue database is closed'));
    return new Promise((resolve, reject) => {
      this.#pending.push({ run: work, resolve, reject });
      if (!this.#flushScheduled) {
        this.#flushScheduled = true;
        // Under load, commits at most every commitWindowMs so that more transactions share one.
        const wait = this.commitWindowMs - (performance.now() - this.#lastFlush);
        if (wait > 0) setTimeout(() => this.#flush(), wait);
        else setImmediate(() => this.#flush());
      }
    });
  }

  #flush(): void {
    this.#flushScheduled = false;
    this.#lastFlush = performance.now();
    const batch = this.#pending;
    this.#pending = [];
    if (batch.length === 0) return;
    if (!this.db.open) {
      for (const item of batch) item.reject(new Error('queue database is closed'));
      return;
    }
    try {
      // The common case: everything in one transaction, one WAL fsync.
      this.db.transaction(() => { for (const item of batch) item.run(); })();
      for (const item of batch) item.resolve();
      return;
    } catch {
      // Something in the batch failed and the whole transaction rolled back: run each item on its
      // own, so that one item's failure is that item's alone.
    }
    for (const item of batch) {
      try {
        this.db.transaction(item.run)();
        item.resolve();
      } catch (err) {
        item.reject(err);
      }
    }
  }

  /** Inside a batch: the message row and its recipients. */
  insertMessage(m: NewMessage): number[] {
    const { recipients, ...row } = m;
    this.#stmts.insertMessage.run({ ...row, smtputf8: m.smtputf8 ? 1 : 0, body8bit: m.body8bit ? 1 : 0 });
    return recipients.map((r) => Number(
      this.#stmts.insertRecipient.run(m.id, r.tenant, r.address, r.domain, r.orcpt, r.notify, m.receivedAt, m.receivedAt).lastInsertRowid));
  }

  /** Inside a batch: records attempt outcomes; marks the message done when nothing is left open. */
  updateRecipients(messageId: string, updates: RecipientUpdate[], now: number): boolean {
    for (const u of updates) {
      this.#stmts.updateRecipient.run({
        id: u.id, state: u.state, nextAttempt: u.nextAttempt, attempted: u.attempted ? 1 : 0, now,
        code: u.code, status: u.status, reply: u.reply, host: u.host, warned: u.warned ? 1 : 0,
      });
    }
    const { n } = this.#stmts.openCount.get(messageId) as { n: number };
    if (n === 0) this.#stmts.markDone.run(messageId);
    return n === 0;
  }

  message(id: string): MessageRow | undefined {
    return this.#stmts.message.get(id) as MessageRow | undefined;
  }

  recipientsOf(id: string): RecipientRow[] {
    return this.#stmts.recipientsOf.all(id) as RecipientRow[];
  }

  openRecipients(): RecipientRow[] {
    return this.#stmts.openRecipients.all() as RecipientRow[];
  }

  doneMessages(limit: number): string[] {
    return (this.#stmts.doneMessages.all(limit) as { id: string }[]).map((r) => r.id);
  }

  /** Inside a batch: removes the rows of a swept message. */
  deleteMessage(id: string): void {
    this.#stmts.deleteRecipients.run(id);
    this.#stmts.deleteMessage.run(id);
  }

  allMessages(): Array<{ id: string; state: MessageRow['state']; size: number }> {
    return this.#stmts.allIds.all() as Array<{ id: string; state: MessageRow['state']; size: number }>;
  }

  setCorrupt(id: string, note: string): void {
    this.#stmts.setCorrupt.run(note, id);
  }

  insertCorrupt(id: string, size: number, receivedAt: number, note: string): void {
    this.#stmts.insertCorrupt.run(id, size, receivedAt, note);
  }

  /** Inside a batch: held recipients of a tenant and/or domain back to queued; returns them. */
  release(tenant: string | null, domain: string | null, now: number): RecipientRow[] {
    return this.#stmts.release.all(now, now, tenant, tenant, domain, domain) as RecipientRow[];
  }

  counts(): Array<{ tenant: string; state: RecipientState; n: number }> {
    return this.#stmts.counts.all() as Array<{ tenant: string; state: RecipientState; n: number }>;
  }

  corrupt(): Array<{ id: string; note: string | null }> {
    return this.#stmts.corrupt.all() as Array<{ id: string; note: string | null }>;
  }

  close(): void {
    if (this.#pending.length > 0) this.#flush();
    this.db.close();
  }
}
