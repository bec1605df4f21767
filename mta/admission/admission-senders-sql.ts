/*
 * The known senders on disk: their own SQLite file (dataDir/senders.sqlite, WAL), apart from the
 * queue database, so learning never competes with the queue's writes.
 *
 * Tables:
 *   sender_tallies  (kind, key, node) → a tally (admission-senders-tally.ts); node '' is this node's
 *                   own count, other names are what cluster peers shared (kept, so a node restarted
 *                   while Redis is away still knows what the others had learned)
 *   sender_marks    (kind, key) → pinned / blocked, note, when, by whom
 *   sender_outbox   operator changes made while Redis was away, in order, until they are shared
 *   sender_meta     name → value: `epoch`, the Redis incarnation last synchronised with
 * Takes: batches from KnownSenders (one transaction per flush), marks as operators set them.
 * Gives: everything back at open, least recently seen first.
 */
import { mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import Database from 'better-sqlite3';
import type { SenderKind, SenderRef } from './admission-senders-key.js';
import { markOf, tallyOf, type Mark, type Tally } from './admission-senders-tally.js';

const SCHEMA = `
CREATE TABLE IF NOT EXISTS sender_tallies (
  kind TEXT NOT NULL, key TEXT NOT NULL, node TEXT NOT NULL,
  clean REAL NOT NULL, refused REAL NOT NULL, spam REAL NOT NULL, score_sum REAL NOT NULL, scored REAL NOT NULL,
  at INTEGER NOT NULL, first_seen INTEGER NOT NULL, last_seen INTEGER NOT NULL, pairs TEXT,
  PRIMARY KEY (kind, key, node)
);
CREATE TABLE IF NOT EXISTS sender_marks (
  kind TEXT NOT NULL, key TEXT NOT NULL, flag TEXT NOT NULL, note TEXT, at INTEGER NOT NULL, by TEXT NOT NULL,
  PRIMARY KEY (kind, key)
);
CREATE TABLE IF NOT EXISTS sender_outbox (seq INTEGER PRIMARY KEY, change TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sender_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
`;

/** This node's own tallies are stored under this node name. */
export const OWN = '';

export interface TallyRow extends SenderRef {
  node: string;
  tally: Tally;
}

export interface SendersBatch {
  /** Tallies to store; null removes that node's tally of the entry. */
  tallies: Array<SenderRef & { node: string; tally: Tally | null }>;
  /** Entries removed whole (forgotten, evicted): every node's tally and the mark. */
  removed: SenderRef[];
}

interface Row {
  kind: SenderKind; key: string; node: string; clean: number; refused: number; spam: number; score_sum: number; scored: number;
  at: number; first_seen: number; last_seen: number; pairs: string | null;
}

export class SendersDb {
  readonly #db: Database.Database;
  readonly #put: Database.Statement;
  readonly #del: Database.Statement;
  readonly #drop: Database.Statement;
  readonly #dropMark: Database.Statement;
  readonly #mark: Database.Statement;

  private constructor(db: Database.Database) {
    this.#db = db;
    this.#put = db.prepare(`INSERT OR REPLACE INTO sender_tallies VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`);
    this.#del = db.prepare(`DELETE FROM sender_tallies WHERE kind = ? AND key = ? AND node = ?`);
    this.#drop = db.prepare(`DELETE FROM sender_tallies WHERE kind = ? AND key = ?`);
    this.#dropMark = db.prepare(`DELETE FROM sender_marks WHERE kind = ? AND key = ?`);
    this.#mark = db.prepare(`INSERT OR REPLACE INTO sender_marks VALUES (?, ?, ?, ?, ?, ?)`);
  }

  static open(path: string): SendersDb {
    mkdirSync(dirname(path), { recursive: true });
    const db = new Database(path);
    db.pragma('journal_mode = WAL');
    db.pragma('synchronous = NORMAL');
    db.exec(SCHEMA);
    return new SendersDb(db);
  }

  /** Every stored tally, least recently seen first; rows that do not read as a tally are skipped. */
  tallies(): TallyRow[] {
    const rows = this.#db.prepare(`SELECT * FROM sender_tallies ORDER BY last_seen`).all() as Row[];
    const out: TallyRow[] = [];
    for (const r of rows) {
      const tally = tallyOf({
        clean: r.clean, refused: r.refused, spam: r.spam, scoreSum: r.score_sum, scored: r.scored, at: r.at,
        firstSeen: r.first_seen, lastSeen: r.last_seen, pairs: r.pairs ? JSON.parse(r.pairs) as unknown : undefined,
      });
      if (tally) out.push({ kind: r.kind, key: r.key, node: r.node, tally });
    }
    return out;
  }

  marks(): Array<SenderRef & { mark: Mark }> {
    const rows = this.#db.prepare(`SELECT * FROM sender_marks`).all() as Array<SenderRef & { flag: string; note: string | null; at: number; by: string }>;
    return rows.flatMap((r) => {
      const mark = markOf(r);
      return mark ? [{ kind: r.kind, key: r.key, mark }] : [];
    });
  }

  write(batch: SendersBatch): void {
    this.#db.transaction(() => {
      for (const r of batch.removed) {
        this.#drop.run(r.kind, r.key);
        this.#dropMark.run(r.kind, r.key);
      }
      for (const { kind, key, node, tally: t } of batch.tallies) {
        if (!t) this.#del.run(kind, key, node);
        else this.#put.run(kind, key, node, t.clean, t.refused, t.spam, t.scoreSum, t.scored, t.at, t.firstSeen, t.lastSeen, t.pairs ? JSON.stringify(t.pairs) : null);
      }
    })();
  }

  setMark(ref: SenderRef, mark: Mark | null): void {
    if (mark) this.#mark.run(ref.kind, ref.key, mark.flag, mark.note, mark.at, mark.by);
    else this.#dropMark.run(ref.kind, ref.key);
  }

  outbox(): Array<{ seq: number; change: string }> {
    return this.#db.prepare(`SELECT seq, change FROM sender_outbox ORDER BY seq`).all() as Array<{ seq: number; change: string }>;
  }

  queue(change: string): void {
    this.#db.prepare(`INSERT INTO sender_outbox (change) VALUES (?)`).run(change);
  }

  sent(seq: number): void {
    this.#db.prepare(`DELETE FROM sender_outbox WHERE seq = ?`).run(seq);
  }

  meta(name: string): string | null {
    const row = this.#db.prepare(`SELECT value FROM sender_meta WHERE name = ?`).get(name) as { value: string } | undefined;
    return row?.value ?? null;
  }

  setMeta(name: string, value: string): void {
    this.#db.prepare(`INSERT OR REPLACE INTO sender_meta VALUES (?, ?)`).run(name, value);
  }

  close(): void {
    this.#db.close();
  }
}
