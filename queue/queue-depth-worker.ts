/*
 * The queue depth thread's body (queue-depth-thread.ts): a read-only connection of its own to the
 * queue database, answering each request with one of the depth reads — per tenant and state
 * (queue-depth.ts, cached there) or per tenant and domain (queue-depth-domains.ts).
 *
 * Takes: the database file (workerData), then requests { id, kind }. Gives: { id, ok, value | error }.
 */
import { parentPort, workerData } from 'node:worker_threads';
import Database from 'better-sqlite3';
import { depthReader } from './queue-depth.js';
import { queueDepth } from './queue-depth-domains.js';

export interface DepthRequest { id: number; kind: 'rows' | 'domains' }
export type DepthAnswer = { id: number; ok: true; value: unknown } | { id: number; ok: false; error: string };

const port = parentPort!;
// Read-only: this thread never writes, and WAL lets it read beside the writer thread.
const db = new Database((workerData as { file: string }).file, { readonly: true, fileMustExist: true });
db.pragma('busy_timeout = 5000');
const rows = depthReader(db);

port.on('message', (req: DepthRequest) => {
  try {
    port.postMessage({ id: req.id, ok: true, value: req.kind === 'rows' ? rows() : queueDepth(db) } satisfies DepthAnswer);
  } catch (err) {
    port.postMessage({ id: req.id, ok: false, error: (err as Error).message } satisfies DepthAnswer);
  }
});
