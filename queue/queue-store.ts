/*
 * The queue database (SQLite through better-sqlite3, WAL; a batch with a durable unit is a sync
 * point, the others are not synced at all: queue-store-worker.ts).
 *
 * One row per accepted message (envelope, trace headers, DSN parameters) and one per recipient
 * (tenant, state, attempts, next attempt, the reply that decided its last attempt). The message
 * bytes are not here: they are in the spool file of the same id.
 *
 * Writes are batched: `write(ops)` queues a unit of operations; units wait while the previous
 * batch commits in the writer thread (queue-store-worker.ts) and then go together in one
 * transaction, so concurrent SMTP transactions share one WAL fsync (group commit) while each
 * caller still waits for its own durable commit, and the main thread never blocks on an fsync.
 * Reads run on the main thread's own connection (WAL: readers see every committed batch). The
 * records (scans, engine statistics and events, transcripts, egress events: queue-records.ts)
 * are written through this same `write`: one database, one writer thread.
 *
 * Recipient states: queued (waiting for its next attempt), held (kept until released),
 * delivered, bounced (permanent failure or expiry). A message whose recipients are all final is
 * marked done and swept: its spool file is removed, then its rows.
 */
import { closeSync, existsSync, openSync, statSync } from 'node:fs';
import { Worker } from 'node:worker_threads';
import Database from 'better-sqlite3';
import { workerUrl } from '../base/base-worker-url.js';
import { configure, createReader, migrate, SCHEMA, type MessageRow, type QueueReader, type RecipientRow, type WriteOp } from './queue-store-sql.js';
import { isSpaceError } from './queue-space.js';
import type { UnitResult } from './queue-store-worker.js';
import { createSuppressionReader, type SuppressionEntry } from './queue-suppression-sql.js';

export type { MessageRow, NewMessage, NewRecipient, RecipientRow, RecipientSelector, RecipientState, RecipientUpdate, WriteOp } from './queue-store-sql.js';

/** The files the writer thread runs: the queue's operations and the records' (and the corrupt entries'). */
const WRITER_SOURCES = ['queue-store-worker', 'queue-store-sql', 'queue-records-sql', 'queue-records-egress', 'queue-records-transcripts', 'queue-records-transcript-chunks', 'queue-corrupt', 'queue-suppression-sql', 'queue-attempts-sql'];


interface Pending {
  unit: WriteOp[];
  resolve: (results: unknown[]) => void;
  reject: (err: Error) => void;
  /** An outcome or a removal: may use the space reserve (see `onFull`). */
  essential: boolean;
  /** Must be on the device when it resolves (false: its content is durable elsewhere, queue-journal.ts). */
  durable: boolean;
  /** Already tried again once room was made: a second failure is final. */
  retried?: boolean;
  /** Nobody waits on it for a reply: it may wait LAZY_MS for others to share its commit (see `write`). */
  lazy: boolean;
  /** When it was queued (performance.now()). */
  at: number;
}

/** How long units nobody is waiting on for a reply may wait for company. */
const LAZY_MS = 50;

export class QueueStore {
  readonly db: Database.Database;
  /** The database file did not exist (or was empty) when opened: any record it should hold was lost. */
  readonly newDatabase: boolean;
  readonly #worker: Worker;
  #pending: Pending[] = [];
  #inFlight: Map<number, Pending[]> = new Map();
  #seq = 0;
  #lastStart = 0;
  #timer: NodeJS.Timeout | null = null;
  #lazyTimer: NodeJS.Timeout | null = null;
  #closed = false;
  #closing: Promise<boolean> | null = null;
  /** Batches committed as sync points: every commit before each was then on the device. */
  syncPoints = 0;
  /** Set when the writer thread died: every write from then on fails at once (and DATA gets a 4xx). */
  #dead: Error | null = null;
  readonly #read: QueueReader;
  /** The tenant's suppression entry for an address, in force at `now` (queue-suppression-sql.ts). */
  readonly suppressed: (tenant: string, address: string, now: number) => SuppressionEntry | undefined;
  /**
   * Called when an essential unit failed for want of space: true when room was made (the space
   * reserve given back), and the unit is then tried once more.
   */
  onFull: (() => boolean) | null = null;
  /**
   * True while new mail is to be kept out (the space reserve is released): a unit that inserts a
   * message and is not essential (new mail; a notice goes with an outcome) is then refused with
   * ENOSPC when its batch is formed, however long ago it was queued.
   */
  refuseNewMail: (() => boolean) | null = null;

  constructor(file: string, private readonly fsync: boolean, private readonly commitWindowMs = 0) {
    const empty = (f: string) => !existsSync(f) || statSync(f).size === 0;
    this.newDatabase = empty(file) && empty(`${file}-wal`);
    // Made by us at 0600 first: SQLite gives its WAL and shared-memory files the database file's mode.
    closeSync(openSync(file, 'a', 0o600));
    this.db = new Database(file);
    configure(this.db, fsync);
    this.db.exec(SCHEMA);
    migrate(this.db);
    this.#worker = new Worker(workerUrl(import.meta.url, 'queue', WRITER_SOURCES, 'the queue writer thread'), { workerData: { file, fsync } });
    // Referenced only while it has work: an idle writer must not keep the process alive, a busy one must.
    this.#worker.unref();
    this.#worker.on('message', (msg: { seq: number; results: UnitResult[]; synced: boolean } | { closed: true; synced: boolean }) => {
      if ('closed' in msg) return;
      if (msg.synced) this.syncPoints++;
      const batch = this.#inFlight.get(msg.seq)!;
      this.#inFlight.delete(msg.seq);
      const errors = msg.results.map((r) => (r.ok ? null : Object.assign(new Error(r.error.message), { code: r.error.code, name: r.error.name ?? 'Error' })));
      const full = (i: number) => batch[i].essential && !batch[i].retried && isSpaceError(errors[i]);
      // Room is made once for the batch, and every essential unit that failed for want of it is
      // tried again: a purge beside an outcome in the same batch needs it as much.
      const room = batch.some((_, i) => full(i)) && (this.onFull?.() ?? false);
      batch.forEach((p, i) => {
        const r = msg.results[i];
        if (r.ok) return p.resolve(r.results);
        if (room && full(i)) this.#pending.push({ ...p, retried: true });
        else p.reject(errors[i]!);
      });
      this.#pump();
    });
    const die = (err: Error) => {
      if (this.#dead) return;
      this.#dead = Object.assign(new Error(`queue database writer stopped: ${err.message}`, { cause: err }), { code: 'SQLITE_WRITER_DEAD' });
      this.#failAll(this.#dead);
    };
    this.#worker.on('error', die);
    this.#worker.on('messageerror', die);
    this.#worker.on('exit', (code) => { if (!this.#closed) die(new Error(`exited with code ${code}`)); });
    this.#read = createReader(this.db);
    this.suppressed = createSuppressionReader(this.db);
  }

  /**
   * Commits one unit of operations (all or none) and resolves with their results once durable.
   * Units queued while a batch is committing go together in the next one. An `essential` unit (a
   * delivery outcome, a removal) that fails for want of space is tried again once `onFull` made
   * room; new mail is not essential, so it can never use up the reserve, and it is refused while
   * `refuseNewMail` says so. A unit that is not `durable` (a new message already durable in the
   * spool journal, or a record nobody waits on) is committed without a sync (synchronous=OFF); a
   * batch holding any durable unit is a sync point, which makes every earlier commit durable too.
   * A `lazy` unit (no reply waits on it: a delivery outcome already journaled, a sweep, records)
   * waits up to LAZY_MS for other units to share its commit: every page a commit changes goes into
   * the WAL whole, so rows of several messages in one commit cost the device less.
   */
  write(unit: WriteOp[], opts: { essential?: boolean; durable?: boolean; lazy?: boolean } = {}): Promise<unknown[]> {
    if (this.#dead) return Promise.reject(this.#dead);
    if (this.#closed) return Promise.reject(new Error('queue database is closed'));
    this.#worker.ref();
    return new Promise((resolve, reject) => {
      const durable = opts.durable ?? true;
      this.#pending.push({ unit, resolve, reject, essential: opts.essential ?? false, durable, lazy: !durable && (opts.lazy ?? false), at: performance.now() });
      this.#pump();
    });
  }

  #pump(): void {
    if (this.#inFlight.size === 0 && this.#pending.length === 0 && !this.#closing) this.#worker.unref();
    if (this.#inFlight.size > 0 || this.#pending.length === 0 || this.#timer) return;
    if (this.#pending.every((p) => p.lazy) && this.#lastStart !== -Infinity) {
      const wait = this.#pending[0].at + LAZY_MS - performance.now();
      if (wait > 0) {
        this.#lazyTimer ??= setTimeout(() => { this.#lazyTimer = null; this.#pump(); }, wait);
        return;
      }
    }
    if (this.#lazyTimer) clearTimeout(this.#lazyTimer);
    this.#lazyTimer = null;
    // Units that need no sync (new messages already durable in the journal, each waited on by a 250)
    // do not wait for a window: they go as soon as the previous commit is done, together with
    // whatever came meanwhile (group commit without a floor). Durable ones use queue.commitWindow.
    const window = this.#pending.some((p) => p.durable) ? this.commitWindowMs : 0;
    const wait = this.#lastStart === -Infinity ? 0 : window - (performance.now() - this.#lastStart);
    if (wait > 0) {
      this.#timer = setTimeout(() => { this.#timer = null; this.#pump(); }, wait);
      return;
    }
    let batch = this.#pending;
    this.#pending = [];
    if (this.refuseNewMail?.()) {
      const isNewMail = (p: Pending) => !p.essential && p.unit.some((op) => op.op === 'insertMessage');
      for (const p of batch.filter(isNewMail)) {
        p.reject(Object.assign(new Error('the space reserve is released: new mail is refused until it is made again'), { code: 'ENOSPC' }));
      }
      batch = batch.filter((p) => !isNewMail(p));
      if (batch.length === 0) return this.#pump();
    }
    const seq = ++this.#seq;
    this.#inFlight.set(seq, batch);
    this.#lastStart = performance.now();
    this.#worker.postMessage({ seq, units: batch.map((p) => p.unit), durable: batch.some((p) => p.durable) });
  }

  #failAll(err: Error): void {
    for (const batch of this.#inFlight.values()) for (const p of batch) p.reject(err);
    this.#inFlight.clear();
    for (const p of this.#pending.splice(0)) p.reject(err);
  }

  message(id: string): MessageRow | undefined {
    return this.#read.message(id);
  }

  recipientsOf(id: string): RecipientRow[] {
    return this.#read.recipientsOf(id);
  }

  /** Queued recipients of active messages: what is scheduled at startup. */
  openRecipients(): RecipientRow[] {
    return this.#read.openRecipients();
  }

  /** Messages whose recipients are all final: to be swept. */
  doneMessages(limit: number): string[] {
    return this.#read.doneMessages(limit);
  }

  allMessages(): Array<{ id: string; state: MessageRow['state']; size: number }> {
    return this.#read.allMessages();
  }

  openCounts(): Record<string, number> {
    return this.#read.openCounts();
  }

  /**
   * Commits what is queued, stops the writer thread, closes both connections. Resolves true when
   * the database file was left complete and synced (the WAL checkpointed and emptied).
   */
  close(): Promise<boolean> {
    this.#closing ??= this.#close();
    return this.#closing;
  }

  async #close(): Promise<boolean> {
    this.#worker.ref();
    if (this.#timer) {
      clearTimeout(this.#timer);
      this.#timer = null;
    }
    if (this.#lazyTimer) clearTimeout(this.#lazyTimer);
    this.#lazyTimer = null;
    this.#lastStart = -Infinity;
    while (!this.#dead && (this.#pending.length > 0 || this.#inFlight.size > 0)) {
      this.#pump();
      await new Promise((r) => setTimeout(r, 2));
    }
    this.#closed = true;
    let synced = false;
    if (!this.#dead) {
      synced = await new Promise<boolean>((resolve) => {
        this.#worker.once('message', (msg: { synced?: boolean }) => resolve(msg.synced === true));
        this.#worker.once('exit', () => resolve(false));
        this.#worker.postMessage({ close: true });
      });
    }
    await this.#worker.terminate();
    this.db.close();
    return synced && this.fsync;
  }
}
