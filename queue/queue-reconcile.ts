/*
 * Startup reconciliation of spool files against queue records.
 *
 * Before any listener opens: a record whose file is missing or of the wrong size ("damaged": the
 * message was acknowledged), and a file without a record ("unacknowledged": no 250 was sent),
 * are set aside in the `corrupt` state with their kind (queue-corrupt.ts; a file without a record
 * is "damaged" instead when the database is new, its records lost), the file moved to
 * spool/corrupt/, and reported; nothing is silently dropped or delivered. Messages already marked
 * done only had their cleanup interrupted: their leftover file and rows are removed.
 */
import { classify } from './queue-corrupt.js';
import type { Spool } from './queue-spool.js';
import type { QueueStore, WriteOp } from './queue-store.js';
import { QUEUE_ID_PATTERN, queueIdTime } from './queue-id.js';

export interface ReconcileReport {
  active: number;
  cleaned: number;
  corrupt: Array<{ id: string; kind: string; reason: string }>;
}

export async function reconcile(spool: Spool, store: QueueStore, now = Date.now()): Promise<ReconcileReport> {
  const files = new Set(await spool.list());
  const report: ReconcileReport = { active: 0, cleaned: 0, corrupt: [] };
  const done: string[] = [];
  const work: WriteOp[] = [];

  for (const row of store.allMessages()) {
    const hasFile = files.delete(row.id);
    if (row.state === 'done') {
      if (hasFile) await spool.remove(row.id);
      done.push(row.id);
      continue;
    }
    // Already set aside: it waits for an operator (or its retention), whatever is in the spool now.
    if (row.state === 'corrupt') continue;
    const verdict = classify({ recordSize: row.size, fileSize: hasFile ? await spool.size(row.id) : null });
    if (!verdict) {
      report.active++;
      continue;
    }
    if (hasFile) await spool.setAside(row.id);
    work.push({ op: 'setCorrupt', id: row.id, note: verdict.reason, at: now });
    report.corrupt.push({ id: row.id, ...verdict });
  }

  for (const id of files) {
    const size = (await spool.size(id)) ?? 0;
    const verdict = classify({ recordSize: null, fileSize: size, newDatabase: store.newDatabase })!;
    await spool.setAside(id);
    const receivedAt = QUEUE_ID_PATTERN.test(id) ? queueIdTime(id) : now;
    work.push({ op: 'insertCorrupt', id, kind: verdict.kind, size, receivedAt, note: verdict.reason, at: now });
    report.corrupt.push({ id, ...verdict });
  }

  for (const id of done) work.push({ op: 'deleteMessage', id });
  report.cleaned = done.length;
  // One unit each: a failing entry must not undo the others.
  await Promise.all(work.map((op) => store.write([op])));
  return report;
}
