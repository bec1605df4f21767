/*
 * The queue database's writer, in its own thread: receives batches of units (each unit a list of
 * write operations that stand or fall together), runs a batch as one transaction, and answers with
 * each unit's results. If the batch fails, each unit is run on its own so that one unit's failure
 * is that unit's alone.
 *
 * Sync points (queue.fsync on): a batch none of whose units must be on the device when it resolves
 * (its contents are durable in the spool journal, or are records nobody waits on) is committed with
 * synchronous=OFF: nothing is synced, and the checkpoints it triggers copy pages into the database
 * file without a sync either, so the page cache absorbs most of the WAL's rewrites. A batch with a
 * durable unit is a sync point: committed with synchronous=FULL, then the WAL checkpointed in full
 * (which syncs the database file): every commit before it, unsynced ones included, is then on the
 * device. A busy checkpoint is that batch's error. Between sync points a crash of the machine may
 * leave the database damaged: the run marker (queue-run-marker.ts) notices and the store is checked
 * (queue-store-check.ts); what the journal still holds is replayed into it.
 */
import { parentPort, workerData } from 'node:worker_threads';
import Database from 'better-sqlite3';
import { configure, createWriter, type WriteOp } from './queue-store-sql.js';

interface Batch { seq: number; units: WriteOp[][]; durable: boolean }
export type UnitResult = { ok: true; results: unknown[] } | { ok: false; error: { message: string; code?: string; name?: string } };

const { file, fsync } = workerData as { file: string; fsync: boolean };
const db = new Database(file);
configure(db, fsync);
// A small WAL is rewritten in place soon after it was written: between sync points the page cache
// takes most of those writes, and each checkpoint at a sync point has little to copy.
db.pragma('wal_autocheckpoint = 256');
const apply = createWriter(db);
const runUnit = db.transaction((unit: WriteOp[]) => unit.map(apply));
/** The sync level set: FULL for a sync point, OFF between them (fsync on; always OFF when it is off). */
let full = fsync;
function syncFor(durable: boolean): void {
  if (!fsync || durable === full) return;
  db.pragma(`synchronous = ${durable ? 'FULL' : 'OFF'}`);
  full = durable;
}

/** Makes every commit so far durable: the WAL copied into the database file, both synced. */
function syncPoint(): void {
  const [r] = db.pragma('wal_checkpoint(FULL)') as Array<{ busy: number; log: number; checkpointed: number }>;
  if (r.busy !== 0) throw Object.assign(new Error('the queue database could not be checkpointed (a reader held it): the commit is not synced'), { code: 'SQLITE_BUSY' });
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
  let synced = false;
  if (fsync && msg.durable && results.some((r) => r.ok)) {
    try {
      syncPoint();
      synced = true;
    } catch (err) {
      // Committed, but not known to be on the device: no durable unit may resolve as if it were.
      const error = describe(err);
      results = results.map((r) => (r.ok ? { ok: false as const, error } : r));
    }
  }
  parentPort!.postMessage({ seq: msg.seq, results, synced });
});
