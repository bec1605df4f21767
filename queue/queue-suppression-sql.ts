/*
 * The suppression list in the queue database: per tenant, the addresses its mail is no longer
 * sent to — learnt from hard bounces (queue-attempt.ts marks the update, the writer adds the entry
 * in the same transaction as the recipient's outcome) or given by an operator (add, import) —
 * each with its class, why, when, and when it expires (NULL: never).
 *
 * Gives: the schema and its migration (the recipients' `bounce_class` column, for databases made
 *   before it), the write operations as data (`SuppressionWriteOp`, applied on the store's writer
 *   thread, queue-store-worker.ts) and the reads (one entry, for RCPT and delivery; a filtered
 *   list, for the CLI and the admin API). Addresses are kept lower-cased: a mailbox that bounced
 *   is not tried again under another spelling of its case.
 */
import type Database from 'better-sqlite3';

export type SuppressionSource = 'bounce' | 'operator' | 'import';

export interface SuppressionEntry {
  tenant: string;
  address: string;
  /** A bounce class (queue-classify.ts) or what the operator gave. */
  class: string;
  reason: string;
  source: SuppressionSource;
  created_at: number;
  /** Null: until removed. */
  expires_at: number | null;
}

export type SuppressionWriteOp =
  | { op: 'suppressionAdd'; entries: SuppressionEntry[] }
  | { op: 'suppressionRemove'; tenant: string; address: string }
  | { op: 'suppressionPrune'; now: number };

export const SUPPRESSION_SCHEMA = `
CREATE TABLE IF NOT EXISTS suppressions (
  tenant TEXT NOT NULL,
  address TEXT NOT NULL,
  class TEXT NOT NULL,
  reason TEXT NOT NULL,
  source TEXT NOT NULL,
  created_at INTEGER NOT NULL,
  expires_at INTEGER,
  PRIMARY KEY (tenant, address)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS suppressions_expires ON suppressions (expires_at);
`;

/** The key an address is kept under. */
export const suppressionKey = (address: string): string => address.toLowerCase();

/** Databases made before bounces were classified: the recipients get their class column. */
export function migrateSuppression(db: Database.Database): void {
  const columns = (db.prepare(`PRAGMA table_info(recipients)`).all() as Array<{ name: string }>).map((c) => c.name);
  if (!columns.includes('bounce_class')) db.exec(`ALTER TABLE recipients ADD COLUMN bounce_class TEXT`);
}

const UPSERT = `INSERT INTO suppressions (tenant, address, class, reason, source, created_at, expires_at)
  VALUES (@tenant, @address, @class, @reason, @source, @created_at, @expires_at)
  ON CONFLICT (tenant, address) DO UPDATE SET class = excluded.class, reason = excluded.reason, source = excluded.source,
    created_at = excluded.created_at, expires_at = excluded.expires_at`;

/** Prepares the write statements on `db` and returns the function that applies one operation. */
export function createSuppressionWriter(db: Database.Database): (op: SuppressionWriteOp) => unknown {
  const s = {
    upsert: db.prepare(UPSERT),
    remove: db.prepare(`DELETE FROM suppressions WHERE tenant = ? AND address = ?`),
    prune: db.prepare(`DELETE FROM suppressions WHERE expires_at IS NOT NULL AND expires_at <= ?`),
  };
  return (op) => {
    switch (op.op) {
      case 'suppressionAdd':
        for (const e of op.entries) s.upsert.run({ ...e, address: suppressionKey(e.address) });
        return op.entries.length;
      case 'suppressionRemove':
        return s.remove.run(op.tenant, suppressionKey(op.address)).changes;
      case 'suppressionPrune':
        return s.prune.run(op.now).changes;
    }
  };
}

/**
 * The statement the recipients' writer runs when a hard bounce is to be suppressed: the entry
 * takes the recipient's tenant and address from its row, so it cannot name another tenant.
 */
export function prepareBounceSuppression(db: Database.Database): (messageId: string, id: number, cls: string, reason: string, now: number, expiresAt: number | null) => void {
  const recipient = db.prepare(`SELECT tenant, address FROM recipients WHERE message_id = ? AND id = ?`);
  const upsert = db.prepare(UPSERT);
  return (messageId, id, cls, reason, now, expiresAt) => {
    const r = recipient.get(messageId, id) as { tenant: string; address: string } | undefined;
    // The key is made here, not by SQLite's lower(), which folds ASCII only (SMTPUTF8 addresses).
    if (r) upsert.run({ tenant: r.tenant, address: suppressionKey(r.address), class: cls, reason, source: 'bounce', created_at: now, expires_at: expiresAt });
  };
}

export interface SuppressionFilter {
  tenant?: string;
  class?: string;
  /** Part of the address. */
  match?: string;
  /** Include entries past their expiry (not yet pruned). */
  expired?: boolean;
  limit?: number;
}

function hasTable(db: Database.Database): boolean {
  return db.prepare(`SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'suppressions'`).get() !== undefined;
}

/** Entries by tenant and address, newest first (none from a database made before the list existed). */
export function readSuppressions(db: Database.Database, f: SuppressionFilter, now: number): SuppressionEntry[] {
  if (!hasTable(db)) return [];
  return db.prepare(`SELECT * FROM suppressions WHERE (@tenant IS NULL OR tenant = @tenant) AND (@class IS NULL OR class = @class)
    AND (@match IS NULL OR instr(address, @match) > 0) AND (@expired = 1 OR expires_at IS NULL OR expires_at > @now)
    ORDER BY created_at DESC, tenant, address LIMIT @limit`).all({
    tenant: f.tenant ?? null, class: f.class ?? null, match: f.match === undefined ? null : suppressionKey(f.match), expired: f.expired ? 1 : 0, now, limit: f.limit ?? -1,
  }) as SuppressionEntry[];
}

/** The main thread's lookup of one address (at RCPT and before each delivery): in force at `now`, or undefined. */
export function createSuppressionReader(db: Database.Database): (tenant: string, address: string, now: number) => SuppressionEntry | undefined {
  const stmt = db.prepare(`SELECT * FROM suppressions WHERE tenant = ? AND address = ? AND (expires_at IS NULL OR expires_at > ?)`);
  return (tenant, address, now) => stmt.get(tenant, suppressionKey(address), now) as SuppressionEntry | undefined;
}
