/*
 * The queue database's writer, in its own thread: receives batches of units (each unit a list of
 * write operations that stand or fall together), runs a batch as one transaction, and answers with
 * each unit's results. If the batch fails, each unit is run on its own so that one unit's failure
 * is that unit's alone.
 *
 * Sync points (queue.fsync on): a batch none of whose units must be on the device when it resolves
 * (its contents are durable in the spool journal, or are records nobody waits on) is committed with
 * synchronous=OFF: nothing is synced. The database file itself changes only at a sync point (no
 * automatic checkpoints): a batch with a durable unit is committed with synchronous=FULL, then the
 * WAL is checkpointed whole and emptied, the WAL synced before its pages are copied and the database
 * file after: every commit before it, unsynced ones included, is then on the device. So a crash of
 * the machine leaves the database file as of the last sync point, whole, and the WAL a valid prefix
 * of the commits since (SQLite's frame checksums stop recovery at the first frame that did not
 * reach the device): commits since the last sync point may be lost, and the spool journal holds
 * what they were for. When the WAL grows past WAL_SYNC_BYTES without one, a sync point is made on
 * the way. A checkpoint kept from finishing by a reader is tried again (BUSY_TRIES); should it
 * still not finish, the batch's units fail. The run marker (queue-run-marker.ts) tells a start after
 * a stop of the machine, which checks the database first (queue-store-check.ts).
 */
import { statSync } from 'node:fs';
import { parentPort, workerData } from 'node:worker_threads';
import Database from 'better-sqlite3';
import { configure, createWriter, type WriteOp } from './queue-store-sql.js';

interface Batch { seq: number; units: WriteOp[][]; durable: boolean }
export type UnitResult = { ok: true; results: unknown[] } | { ok: false; error: { message: string; code?: string; name?: string } };

const { file, fsync } = workerData as { file: string; fsync: boolean };
const db = new Database(file);
configure(db, fsync);
// Checkpoints only at sync points (see above): an unsynced one could leave the file half old, half new.
db.pragma('wal_autocheckpoint = 0');
/** A WAL this large is checkpointed (and synced) without waiting for a durable unit. */
const WAL_SYNC_BYTES = 4 * 1024 * 1024;
const BUSY_TRIES = 3;
const apply = createWriter(db);
const runUnit = db.transaction((unit: WriteOp[]) => unit.map(apply));
/** The sync level set: FULL for a sync point, OFF between them (fsync on; always OFF when it is off). */
let full = fsync;
function syncFor(durable: boolean): void {
  if (!fsync || durable === full) return;
  db.pragma(`synchronous = ${durable ? 'FULL' : 'OFF'}`);
  full = durable;
}

/** Makes every commit so far durable: the WAL synced, copied into the database file, that synced, the WAL emptied. */
function syncPoint(): void {
  syncFor(true);
  for (let i = 1; ; i++) {
    // Each try waits up to the busy timeout for readers of older snapshots.
    const [r] = db.pragma('wal_checkpoint(TRUNCATE)') as Array<{ busy: number; log: number; checkpointed: number }>;
    if (r.busy === 0) return;
    if (i >= BUSY_TRIES) throw Object.assign(new Error('the queue database could not be checkpointed (a reader held it): the commit is not synced'), { code: 'SQLITE_BUSY' });
  }
}

/** Bytes in the WAL: everything since the last sync point (it is emptied at each). */
function walBytes(): number {
  return statSync(`${file}-wal`, { throwIfNoEntry: false })?.size ?? 0;
}

function describe(err: unknown): { message: string; code?: string; name?: string } {
  const e = err as { message?: string; code?: string; name?: string };
  return { message: e?.message ?? String(err), code: e?.code, name: e?.name };
}

/** A clean close: everything checkpointed into the database file and synced, the WAL emptied. */
function close(): boolean {
  let synced = false;
  try {
    syncFor(true);
    const [r] = db.pragma('wal_checkpoint(TRUNCATE)') as Array<{ busy: number }>;
    synced = r.busy === 0;
  } catch {
    synced = false;
  }
  db.close();
  return synced;
}

parentPort!.on('message', (msg: Batch | { close: true }) => {
  if ('close' in msg) {
    const synced = close();
    parentPort!.postMessage({ closed: true, synced });
    return;
  }
  let results: UnitResult[];
  syncFor(msg.durable);
  try {
    results = db.transaction(() => msg.units.map((u) => ({ ok: true as const, results: u.map(apply) })))();
  } catch {
    results = msg.units.map((u) => {
      try {
        return { ok: true as const, results: runUnit(u) };
      } catch (err) {
        return { ok: false as const, error: describe(err) };
      }
    });
  }
  // A sync point when a durable unit committed, or on the way when the WAL has grown past its bound.
  const owed = msg.durable && results.some((r) => r.ok);
  let synced = false;
  if (fsync && (owed || walBytes() > WAL_SYNC_BYTES)) {
    try {
      syncPoint();
      synced = true;
    } catch (err) {
      // Committed, but not known to be on the device: no durable unit may resolve as if it were (on
      // the way, nobody waits: the next sync point takes it).
      const error = describe(err);
      if (owed) results = results.map((r) => (r.ok ? { ok: false as const, error } : r));
    }
  }
  parentPort!.postMessage({ seq: msg.seq, results, synced });
});
