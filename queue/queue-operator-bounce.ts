/*
 * An operator's bounce (`ichidan queue bounce`, POST /v1/queue/bounce): the selected recipients
 * fail now, and their sender gets a delivery status notice — through the same path as a bounce
 * the destination caused: the notice written to the spool (queue-notices.ts) and committed in ONE
 * transaction with the recipients' outcomes, so none is bounced without its notice or twice.
 *
 * Takes: a recipient selection (one message, a tenant's, some domains'); queued and held
 *   recipients are bounced (a quarantined message's too), with reply "550 5.0.0 returned to the
 *   sender by an operator" and the operator's reason, bounce class `operator`; whether a notice
 *   goes is NOTIFY's and the sender's (RFC 3461, queue-bounce.ts `wantsNotice`).
 * Skips: recipients with a delivery attempt under way (`busy`): the destination may be taking
 *   the message right then, and a bounce of a delivered message would tell the sender a lie;
 *   they are counted as `busy`, to be bounced again once the attempt is over. The others are
 *   claimed as under way until the bounce is committed, so no attempt starts for them meanwhile.
 * Gives: how many were bounced, and how many were skipped as busy; the notices to schedule.
 * RFCs: 3464 (the notice), 3463 (5.0.0: other or undefined status).
 */
import type { Logger } from 'pino';
import { wantsNotice } from './queue-bounce.js';
import { writeNotice, type NoticeContext, type WrittenNotice } from './queue-notices.js';
import { selectOpenRecipients } from './queue-store-sql.js';
import type { NewMessage, QueueStore, RecipientRow, RecipientSelector, RecipientUpdate } from './queue-store.js';

export interface BounceContext {
  store: QueueStore;
  notices: NoticeContext;
  log: Logger;
  /**
   * Marks the recipient as under way (the scheduler then starts no attempt for it) unless an
   * attempt is already: false then. `release` ends the mark.
   */
  claim: (messageId: string, recipient: number) => boolean;
  release: (messageId: string, recipient: number) => void;
  /** Rows whose bounce failed, back to the scheduler (a due attempt skipped them while they were claimed). */
  reschedule: (rows: RecipientRow[]) => void;
  /** A notice committed: its recipients to schedule, due now. */
  schedule: (notice: NewMessage, recipientIds: number[]) => void;
}

export const OPERATOR_BOUNCE = { code: 550, status: '5.0.0', bounceClass: 'operator' } as const;

export async function bounceNow(ctx: BounceContext, select: RecipientSelector, reason: string | undefined, now: number): Promise<{ bounced: number; busy: number }> {
  const reply = `${OPERATOR_BOUNCE.code} ${OPERATOR_BOUNCE.status} returned to the sender by an operator${reason ? `: ${reason}` : ''}`;
  const byMessage = new Map<string, RecipientRow[]>();
  let busy = 0;
  for (const r of selectOpenRecipients(ctx.store.db, select)) {
    if (!ctx.claim(r.message_id, r.id)) {
      busy++;
      continue;
    }
    const list = byMessage.get(r.message_id);
    if (list) list.push(r); else byMessage.set(r.message_id, [r]);
  }
  let bounced = 0;
  const settled = new Set<string>();
  try {
    for (const [id, rows] of byMessage) {
      bounced += await bounceMessage(ctx, id, rows, reply, now);
      settled.add(id);
    }
  } finally {
    for (const rows of byMessage.values()) for (const r of rows) ctx.release(r.message_id, r.id);
    // A failure leaves the rest queued: an attempt that came due meanwhile skipped them, so they are scheduled again.
    for (const [id, rows] of byMessage) if (!settled.has(id)) ctx.reschedule(rows);
  }
  return { bounced, busy };
}

async function bounceMessage(ctx: BounceContext, id: string, rows: RecipientRow[], reply: string, now: number): Promise<number> {
  const msg = ctx.store.message(id);
  if (!msg || msg.state !== 'active') return 0;
  const updates: RecipientUpdate[] = rows.map((r) => ({
    id: r.id, state: 'bounced', nextAttempt: now, code: OPERATOR_BOUNCE.code, status: OPERATOR_BOUNCE.status, reply, host: null,
    attempted: false, bounceClass: OPERATOR_BOUNCE.bounceClass,
  }));
  const told = rows.filter((r) => wantsNotice(msg, r, 'failed'))
    .map((r) => ({ ...r, state: 'bounced' as const, last_code: OPERATOR_BOUNCE.code, last_status: OPERATOR_BOUNCE.status, last_reply: reply, last_host: null, updated_at: now }));
  const notice: WrittenNotice | null = told.length > 0 ? await writeNotice(ctx.notices, msg, told, 'failed', now) : null;
  let results: unknown[];
  try {
    results = await ctx.store.write([
      { op: 'updateRecipients', messageId: id, updates, now, fromHeld: true },
      ...(notice ? [{ op: 'insertMessage' as const, message: notice.message }] : []),
    ], { essential: true });
  } catch (err) {
    await notice?.writer.discard().catch((e: unknown) => ctx.log.error({ err: e, qid: notice.writer.id }, 'could not remove an unrecorded delivery status notice'));
    throw err;
  }
  ctx.log.warn({ qid: id, recipients: rows.length, reason: reply, notice: notice?.message.id ?? null }, 'bounced by an operator');
  if (notice) ctx.schedule(notice.message, results[1] as number[]);
  return rows.length;
}
