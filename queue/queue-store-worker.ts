/*
 * The queue database's writer, in its own thread: receives batches of units (each unit a list of
 * write operations that stand or fall together), runs a batch as one transaction (one WAL fsync;
 * none when no unit of the batch asks to be durable: queue-store.ts),
 * and answers with each unit's results. If the batch fails, each unit is run on its own so that
 * one unit's failure is that unit's alone.
 */
import { parentPort, workerData } from 'node:worker_threads';
import Database from 'better-sqlite3';
import { configure, createWriter, type WriteOp } from './queue-store-sql.js';

interface Batch { seq: number; units: WriteOp[][]; durable: boolean }
export type UnitResult = { ok: true; results: unknown[] } | { ok: false; error: { message: string; code?: string; name?: string } };

const { file, fsync } = workerData as { file: string; fsync: boolean };
const db = new Database(file);
configure(db, fsync);
const apply = createWriter(db);
const runUnit = db.transaction((unit: WriteOp[]) => unit.map(apply));
/** The batch's sync level: FULL when any unit must be on the device at its commit, NORMAL otherwise (fsync on). */
let synced = true;
function syncFor(durable: boolean): void {
  if (!fsync || durable === synced) return;
  db.pragma(`synchronous = ${durable ? 'FULL' : 'NORMAL'}`);
  synced = durable;
}

function describe(err: unknown): { message: string; code?: string; name?: string } {
  const e = err as { message?: string; code?: string; name?: string };
  return { message: e?.message ?? String(err), code: e?.code, name: e?.name };
}

parentPort!.on('message', (msg: Batch | { close: true }) => {
  if ('close' in msg) {
    db.close();
    parentPort!.postMessage({ closed: true });
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
  parentPort!.postMessage({ seq: msg.seq, results });
});
