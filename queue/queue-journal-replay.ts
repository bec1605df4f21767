/*
 * At startup, before reconciliation (queue-reconcile.ts): what the spool journal (queue-journal.ts)
 * holds from the last run is made durable where the queue keeps it, then the journal's segments go.
 *
 * The journal is what made each of its messages durable before its 250; the spool file and the
 * queue record were written without a sync. After a stop of the process they are all there (the
 * kernel still had them); after a crash of the machine either may be missing or cut short. So for
 * every message the journal holds and the queue has not swept (no `dropped` record, and no queue
 * record other than an active one):
 *   - a spool file that is missing or does not hold the journal's bytes (cut short; or of the right
 *     size with zeroed pages, its size written back and its data not) is written anew from the
 *     journal's copy (the bytes the client sent, as they were first written);
 *   - a queue record that is missing is inserted from the journal's copy, its recipients queued
 *     (outcomes the database lost are attempted again: a copy may be delivered twice, none is lost);
 *   - the final outcomes the journal holds are applied again (only recipients still queued change:
 *     a delivery the database lost is not attempted again);
 *   - the spool file is fdatasync'ed, the folder synced, and the database synced with a durable
 *     commit: only then are the segments recycled.
 * Takes: the journal, the spool, the store. Gives: how many messages were kept, rewritten, reinserted.
 */
import type { SpoolJournal } from './queue-journal.js';
import type { Spool } from './queue-spool.js';
import type { NewMessage, QueueStore, RecipientUpdate } from './queue-store.js';

export interface JournalReplay {
  /** Messages the journal still held (not swept). */
  kept: number;
  /** Spool files written anew from the journal's copy. */
  rewritten: number;
  /** Queue records inserted from the journal's copy. */
  reinserted: number;
  /** Journaled outcomes applied again to messages still active. */
  outcomes: number;
}

export async function replayJournal(journal: SpoolJournal, spool: Spool, store: QueueStore): Promise<JournalReplay> {
  const report: JournalReplay = { kept: 0, rewritten: 0, reinserted: 0, outcomes: 0 };
  const live: string[] = [];
  const { messages, outcomes } = await journal.load();
  for (const m of messages) {
    const row = store.message(m.id);
    // Done (its cleanup interrupted) or set aside: the reconciliation's, as any other entry.
    if (row && row.state !== 'active') continue;
    if (!(await spool.holdsBytes(m.id, m.body))) {
      await spool.rewriteFromJournal(m.id, m.body);
      report.rewritten++;
    }
    if (!row) {
      // An outcome or a removal may use the space reserve; so may this: the message was acknowledged.
      await store.write([{ op: 'insertMessage', message: m.record as NewMessage }], { essential: true });
      report.reinserted++;
    }
    live.push(m.id);
  }
  // Final outcomes the database may have lost: applied again (only recipients still queued change).
  for (const o of outcomes) {
    if (store.message(o.id)?.state !== 'active') continue;
    const { updates, now } = o.record as { updates: RecipientUpdate[]; now: number };
    await store.write([{ op: 'updateRecipients', messageId: o.id, updates, now }], { essential: true });
    report.outcomes++;
  }
  for (const id of live) await spool.syncFile(id);
  if (live.length > 0) await spool.dirSync.sync();
  report.kept = live.length;
  // Every commit before this one, the journal's messages' records among them, is on the device with it.
  await store.write([{ op: 'journalSettled', at: Date.now() }], { essential: true });
  await journal.recycleAll();
  return report;
}
