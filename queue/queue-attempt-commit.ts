/*
 * Recording what an attempt decided (queue-attempt.ts `attemptOutcome`, kind 'recorded'): its
 * notices written to the spool, then committed in ONE transaction with the recipients' updates —
 * a recipient is never recorded as bounced without its bounce, nor bounced twice.
 *
 * Takes: the message row, the plan, now; the store, the pending outcomes, the notice context.
 * Gives: the updates as committed (the caller schedules those still queued) and the notices
 *   inserted, each with its recipients' ids (to be scheduled due now).
 * When a notice cannot be written (a full disk, say), its recipients take the plan's `unwritten`
 *   updates: a refused recipient stays queued with its bounce owed, so later attempts retry the
 *   notice, never the destination; a delay warning waits for the next deferral.
 * When the commit fails: with only deferrals in it, nothing is lost by trying the destination
 *   again, so the error is thrown (the caller retries later). Otherwise the destination's answer
 *   must not be lost, or a delivered message would be sent again at every retry: the updates
 *   (the written notices' recipients taking their `uncommitted` updates, bounces owed again) are
 *   kept in memory by PendingOutcomes (queue-pending.ts) and committed later; the notices' files
 *   are removed — after the outcomes are kept, since a file that cannot be removed must not make
 *   the destination be tried again. Nothing is returned to schedule then.
 */
import type { Logger } from 'pino';
import type { AttemptPlan } from './queue-attempt.js';
import { writeNotice, type NoticeContext, type WrittenNotice } from './queue-notices.js';
import type { PendingOutcomes } from './queue-pending.js';
import type { SpoolJournal } from './queue-journal.js';
import type { MessageRow, NewMessage, QueueStore, RecipientUpdate } from './queue-store.js';

export interface CommitContext {
  store: QueueStore;
  pending: PendingOutcomes;
  notices: NoticeContext;
  log: Logger;
  /** Set (queue.fsync on): an attempt without notices is committed unsynced and its final outcomes journaled. */
  journal?: SpoolJournal | null;
}

export interface CommittedAttempt {
  updates: RecipientUpdate[];
  notices: Array<{ message: NewMessage; recipientIds: number[] }>;
}

export async function commitAttempt(ctx: CommitContext, msg: MessageRow, plan: Extract<AttemptPlan, { kind: 'recorded' }>, now: number): Promise<CommittedAttempt> {
  const updates = new Map<number, RecipientUpdate>(plan.updates.map((u) => [u.id, u]));
  const written: Array<{ notice: WrittenNotice; uncommitted: RecipientUpdate[] }> = [];
  for (const n of plan.notices) {
    try {
      written.push({ notice: await writeNotice(ctx.notices, msg, n.recipients, n.action, now), uncommitted: n.uncommitted });
    } catch (err) {
      ctx.log.error({ err, qid: msg.id, action: n.action }, 'could not write a delivery status notice; retrying later');
      for (const u of n.unwritten) updates.set(u.id, u);
    }
  }
  let noticeIds: number[][];
  // Without notices (the common case) the outcome is made durable in the spool journal, many per
  // fdatasync, after an unsynced commit; a notice's new message is committed synced, as before.
  const journal = written.length === 0 ? ctx.journal ?? null : null;
  try {
    const results = await ctx.store.write([
      { op: 'updateRecipients', messageId: msg.id, updates: [...updates.values()], now },
      ...written.map((w) => ({ op: 'insertMessage' as const, message: w.notice.message })),
    ], { essential: true, durable: journal === null, lazy: true });
    noticeIds = results.slice(1) as number[][];
  } catch (err) {
    const discard = () => Promise.all(written.map((w) => w.notice.writer.discard()
      .catch((e: unknown) => ctx.log.error({ err: e, qid: w.notice.writer.id }, 'could not remove an unrecorded delivery status notice'))));
    if ([...updates.values()].every((u) => u.state === 'queued' && !u.owed)) {
      await discard();
      throw err;
    }
    for (const w of written) for (const u of w.uncommitted) updates.set(u.id, u);
    ctx.pending.keep(msg.id, [...updates.values()], now, err);
    await discard();
    return { updates: [], notices: [] };
  }
  const finals = [...updates.values()].filter((u) => u.state !== 'queued' || u.owed);
  if (journal && finals.length > 0) {
    // Not waited on: it goes with the next batch of new mail (or on its own within LAZY_MS). Lost to
    // a crash of the machine before then, the recipient is tried again: delivered twice, never lost.
    void journal.outcome(msg.id, { updates: finals, now }, { lazy: true }).catch(async (err: unknown) => {
      ctx.log.error({ err, qid: msg.id }, 'could not journal an outcome: the queue database is synced instead');
      await ctx.store.write([{ op: 'journalSettled', at: Date.now() }], { essential: true })
        .catch((e: unknown) => ctx.log.error({ err: e, qid: msg.id }, 'could not sync the queue database: the outcome may be lost in a crash of the machine'));
    });
  }
  return {
    updates: [...updates.values()],
    notices: written.map((w, i) => ({ message: w.notice.message, recipientIds: noticeIds[i] })),
  };
}
