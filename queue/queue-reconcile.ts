/*
 * Startup reconciliation of spool files against queue records.
 *
 * Before any listener opens: a record whose file is missing or of the wrong size, and a file
 * without a record, are set aside in the `corrupt` state (the file moved to spool/corrupt/) and
 * reported; nothing is silently dropped or delivered. Messages already marked done only had
 * their cleanup interrupted: their leftover file and rows are removed.
 */
import type { Spool } from './queue-spool.js';
import type { QueueStore, WriteOp } from './queue-store.js';
import { QUEUE_ID_PATTERN, queueIdTime } from './queue-id.js';

export interface ReconcileReport {
  active: number;
  cleaned: number;
  corrupt: Array<{ id: string; reason: string }>;
}

export async function reconcile(spool: Spool, store: QueueStore): Promise<ReconcileReport> {
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
    if (row.state === 'corrupt') continue;
    if (!hasFile) {
      const reason = 'spool file missing';
      work.push({ op: 'setCorrupt', id: row.id, note: reason });
      report.corrupt.push({ id: row.id, reason });
      continue;
    }
    const size = await spool.size(row.id);
    if (size !== row.size) {
      const reason = `spool file is ${size} bytes, the record says ${row.size}`;
      await spool.setAside(row.id);
      work.push({ op: 'setCorrupt', id: row.id, note: reason });
      report.corrupt.push({ id: row.id, reason });
      continue;
    }
    report.active++;
  }

  for (const id of files) {
    const size = (await spool.size(id)) ?? 0;
    const reason = 'spool file without a queue record (never acknowledged, or its record was lost)';
    await spool.setAside(id);
    const receivedAt = QUEUE_ID_PATTERN.test(id) ? queueIdTime(id) : Date.now();
    work.push({ op: 'insertCorrupt', id, size, receivedAt, note: reason });
    report.corrupt.push({ id, reason });
  }

  for (const id of done) work.push({ op: 'deleteMessage', id });
  report.cleaned = done.length;
  // One unit each: a failing entry must not undo the others.
  await Promise.all(work.map((op) => store.write([op])));
  return report;
}
