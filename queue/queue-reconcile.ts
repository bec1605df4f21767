/*
 * Startup reconciliation of spool files against queue records.
 *
 * Before any listener opens: a record whose file is missing or of the wrong size ("damaged": the
 * message was acknowledged), and a file without a record ("unacknowledged": no 250 was sent),
 * are set aside in the `corrupt` state with their kind (queue-corrupt.ts; a file without a record
 * is "damaged" instead when the database is new, its records lost), the file moved to
 * spool/corrupt/, and reported; nothing is silently dropped or delivered. Messages already marked
 * done only had their cleanup interrupted: their leftover file and rows are removed.
 *
 * The record is committed before its file moves, so a stop in between leaves a file the next start
 * finds again: one in spool/ beside its corrupt record of an unacknowledged entry is moved then,
 * and a file in spool/corrupt/ without any record (left by a start that moved first) is adopted
 * as an entry of its own, so that every file set aside is listed and can expire.
 */
import { classify, readCorruptEntry } from './queue-corrupt.js';
import { isSpaceError } from './queue-space.js';
import type { Spool } from './queue-spool.js';
import type { QueueStore, WriteOp } from './queue-store.js';
import { QUEUE_ID_PATTERN, queueIdTime } from '../base/base-queue-id.js';

export interface ReconcileReport {
  active: number;
  cleaned: number;
  corrupt: Array<{ id: string; kind: string; reason: string }>;
  /** Entries whose record could not be written for want of space: left as they are for the next start. */
  deferred: number;
}

export async function reconcile(spool: Spool, store: QueueStore, now = Date.now()): Promise<ReconcileReport> {
  const files = new Set(await spool.list());
  const aside = new Set(await spool.listAside());
  const report: ReconcileReport = { active: 0, cleaned: 0, corrupt: [], deferred: 0 };
  const done: string[] = [];
  /** Each op, and the file to move to spool/corrupt/ once it is committed. */
  const work: Array<{ op: WriteOp; move: string | null }> = [];
  const moves: string[] = [];

  for (const row of store.allMessages()) {
    const hasFile = files.delete(row.id);
    const hasAside = aside.delete(row.id);
    if (row.state === 'done') {
      if (hasFile) await spool.remove(row.id);
      done.push(row.id);
      continue;
    }
    // Already set aside: it waits for an operator (or its retention), whatever is in the spool now;
    // only a move a stop interrupted is finished (a damaged entry's file in spool/ may be one an
    // operator put back).
    if (row.state === 'corrupt') {
      if (hasFile && !hasAside && readCorruptEntry(store.db, row.id)?.kind === 'unacknowledged') moves.push(row.id);
      continue;
    }
    const verdict = classify({ recordSize: row.size, fileSize: hasFile ? await spool.size(row.id) : null });
    if (!verdict) {
      report.active++;
      continue;
    }
    work.push({ op: { op: 'setCorrupt', id: row.id, note: verdict.reason, at: now }, move: hasFile ? row.id : null });
    report.corrupt.push({ id: row.id, ...verdict });
  }

  const orphan = async (id: string, size: number, move: boolean) => {
    const verdict = classify({ recordSize: null, fileSize: size, newDatabase: store.newDatabase })!;
    const receivedAt = QUEUE_ID_PATTERN.test(id) ? queueIdTime(id) : now;
    work.push({ op: { op: 'insertCorrupt', id, kind: verdict.kind, size, receivedAt, note: verdict.reason, at: now }, move: move ? id : null });
    report.corrupt.push({ id, ...verdict });
  };
  for (const id of files) await orphan(id, (await spool.size(id)) ?? 0, true);
  for (const id of aside) await orphan(id, (await spool.asideSize(id)) ?? 0, false);

  for (const id of done) work.push({ op: { op: 'deleteMessage', id }, move: null });
  report.cleaned = done.length;
  // One unit each: a failing entry must not undo the others. A file whose record did not commit
  // stays where it is, to be found again at the next start.
  // They may use the space reserve: a start on a full disk must still come up so that an operator
  // can purge, and what finds no room even so waits for the next start.
  const committed = await Promise.allSettled(work.map((w) => store.write([w.op], { essential: true })));
  committed.forEach((c, i) => {
    if (c.status === 'fulfilled' && work[i].move) moves.push(work[i].move!);
  });
  for (const id of moves) await spool.setAside(id);
  const failures = committed.filter((c): c is PromiseRejectedResult => c.status === 'rejected');
  const other = failures.find((f) => !isSpaceError(f.reason));
  if (other) throw other.reason;
  report.deferred = failures.length;
  return report;
}
