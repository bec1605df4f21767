/*
 * What one delivery attempt means for the queue: a pure function from the attempt's result to
 * the recipient updates, the retry times and the notices to write. No clock, no randomness of
 * its own, no I/O: the queue (index.ts) reads the rows, calls `attemptOutcome`, writes the
 * notices and commits the updates.
 *
 * Takes: the message row; its recipient rows of this attempt that are still queued once it
 *   ended (an operator's hold or purge meanwhile wins); what delivery/ reported (`DeliveryResult`:
 *   held by route, or one outcome per recipient sent and the signal the destination left); the
 *   lane's destination domain; `queue.*` settings; now; a random source for the jitter.
 * Gives one of:
 *   capped    the destination turned the connection away at its banner for the number we had
 *             open: not an attempt on the message. Nothing is recorded; every row goes back due
 *             now and waits for a turn within the pair's lowered window.
 *   held      a route holds the domain: every row becomes held until an operator releases it.
 *   recorded  per recipient: delivered; bounced (a 5xx, or still deferred at `queue.maxAge`,
 *             then with "gave up" in its reply); or queued again at now + `retryDelay`
 *             (exponential from `retryInitial` by `retryFactor` up to `retryMax`, ±`retryJitter`),
 *             never past the message's expiry. And the notices owed: a bounce for the refused
 *             recipients and a delay warning for those still deferred `delayWarning` after arrival,
 *             each only as NOTIFY wants (RFC 3461, queue-bounce.ts `wantsNotice`).
 * A recipient refused for good whose bounce could not be written before (`owed = 'failed'`) is
 *   not sent again: it is bounced anew with its recorded reply, and only its notice is retried.
 * Every bounce carries its class (queue-classify.ts; 'suppressed' for the recipients the
 *   suppression list stopped, whose outcome was made here without contacting the destination);
 *   a permanent (5xx) one of a class the tenant's rule names is marked to be suppressed until
 *   now + `expire` (0: until removed): the writer adds the entry with the outcome.
 * For each notice it also gives the updates that stand should the notice not be written (a
 *   bounce becomes owed, retried without contacting the destination; a delay warning waits for
 *   the next deferral) and should it be written but the outcomes not committed (the bounce is
 *   owed again, now; the delay warning is not counted as sent).
 * RFCs: 3461 (NOTIFY), 3464 (what the notices report).
 * Settings: queue.retryInitial, retryMax, retryFactor, retryJitter, maxAge, delayWarning;
 *   suppression.classes and .expire (the tenant's, queue-suppression-config.ts).
 */
import type { DeliveryResult, RecipientOutcome } from '../delivery/index.js';
import { wantsNotice, type NoticeAction } from './queue-bounce.js';
import type { QueueConfig } from './queue-config.js';
import type { MessageRow, RecipientRow, RecipientUpdate } from './queue-store.js';
import { deferReply, STATUS } from '../base/base-outcome.js';
import { classifyBounce } from './queue-classify.js';
import type { SuppressionRule } from './queue-suppression-config.js';

export type QueueSettings = QueueConfig['queue'];

/** The wait before attempt `attempts + 1`: exponential, capped, with ±jitter from `random` (0…1). */
export function retryDelay(config: Pick<QueueSettings, 'retryInitial' | 'retryMax' | 'retryFactor' | 'retryJitter'>, attempts: number, random = Math.random): number {
  const base = Math.min(config.retryMax, config.retryInitial * config.retryFactor ** Math.max(0, attempts - 1));
  const jitter = 1 + config.retryJitter * (2 * random() - 1);
  return Math.max(1, Math.round(base * jitter));
}

export interface AttemptInput {
  message: MessageRow;
  /** The recipients of this attempt still queued when it ended (those owed a bounce included). */
  recipients: RecipientRow[];
  result: DeliveryResult;
  /** The lane's destination domain: the host named when delivery reported nothing of its own. */
  domain: string;
  config: QueueSettings;
  now: number;
  random: () => number;
  /** The lane's tenant's rule: which classes of a permanent failure are suppressed, and for how long. */
  suppression?: Pick<SuppressionRule, 'classes' | 'expire'>;
  /** Recipients the suppression list stopped: their outcomes were made here, not by a destination. */
  stopped?: ReadonlySet<number>;
}

export interface NoticePlan {
  action: NoticeAction;
  /** The recipients it reports, as their rows stand after this attempt. */
  recipients: RecipientRow[];
  /** Their updates instead, should the notice not be written. */
  unwritten: RecipientUpdate[];
  /** Their updates instead, should the notice be written but the outcomes not committed. */
  uncommitted: RecipientUpdate[];
}

export type AttemptPlan =
  | { kind: 'capped'; reason: string }
  | { kind: 'held'; updates: RecipientUpdate[] }
  | {
    kind: 'recorded';
    updates: RecipientUpdate[];
    notices: NoticePlan[];
    /** The recipients sent this time, each with what the destination said (for the log). */
    attempted: Array<{ recipient: RecipientRow; outcome: RecipientOutcome }>;
  };

export function attemptOutcome(input: AttemptInput): AttemptPlan {
  const { message: msg, recipients: rows, result, domain, config: q, now, random } = input;
  const owed = rows.filter((r) => r.owed === 'failed');
  if (result.kind === 'outcomes' && result.signal?.kind === 'capped' && owed.length === 0) {
    return { kind: 'capped', reason: result.signal.detail };
  }
  if (result.kind === 'hold') {
    return {
      kind: 'held',
      updates: rows.map((r) => ({ id: r.id, state: 'held', nextAttempt: now, code: null, status: null, reply: 'held by route', host: null, attempted: false })),
    };
  }

  const byId = new Map<number, RecipientOutcome>(result.outcomes.map((o) => [o.id, o]));
  for (const r of owed) {
    byId.set(r.id, { id: r.id, verdict: 'bounced', code: r.last_code ?? 550, status: r.last_status ?? STATUS.otherPermanent, reply: r.last_reply ?? '', host: r.last_host ?? domain });
  }
  const expiresAt = msg.received_at + q.maxAge;
  const retryAt = (r: RecipientRow) => Math.min(now + retryDelay(q, r.attempts + 1, random), Math.max(expiresAt, now + 1));
  const updates: RecipientUpdate[] = [];
  const failed: Array<{ row: RecipientRow; update: RecipientUpdate }> = [];
  const delayed: Array<{ row: RecipientRow; update: RecipientUpdate }> = [];
  const attempted: Array<{ recipient: RecipientRow; outcome: RecipientOutcome }> = [];

  for (const r of rows) {
    const o = byId.get(r.id) ?? { id: r.id, verdict: 'deferred', code: 451, status: STATUS.badConnection, reply: deferReply(STATUS.badConnection, 'no outcome reported'), host: domain };
    const stopped = input.stopped?.has(r.id) ?? false;
    const base = { id: r.id, code: o.code, status: o.status, reply: o.reply, host: o.host, attempted: r.owed !== 'failed' && !stopped, session: o.session };
    const after: RecipientRow = { ...r, attempts: r.attempts + 1, last_code: o.code, last_status: o.status, last_reply: o.reply, last_host: o.host, updated_at: now };
    let update: RecipientUpdate;
    if (o.verdict === 'delivered') {
      update = { ...base, state: 'delivered', nextAttempt: now };
    } else if (o.verdict === 'bounced' || now >= expiresAt) {
      const reply = o.verdict === 'bounced' || r.owed === 'failed' ? o.reply : `${o.reply} (gave up: in the queue longer than queue.maxAge)`;
      const bounceClass = stopped ? 'suppressed' : (r.owed === 'failed' && r.bounce_class) || classifyBounce({ code: o.code, status: o.status, text: reply });
      const rule = input.suppression;
      const suppress = !stopped && o.code >= 500 && rule?.classes.some((c) => c === bounceClass)
        ? { reason: reply, expiresAt: rule.expire > 0 ? now + rule.expire : null } : null;
      update = { ...base, reply, state: 'bounced', nextAttempt: now, bounceClass, suppress };
      if (wantsNotice(msg, r, 'failed')) failed.push({ row: { ...after, last_reply: reply }, update });
    } else {
      const warn = q.delayWarning > 0 && r.warned === 0 && now - msg.received_at >= q.delayWarning && wantsNotice(msg, r, 'delayed');
      update = { ...base, state: 'queued', nextAttempt: retryAt(r), warned: warn };
      if (warn) delayed.push({ row: after, update });
    }
    updates.push(update);
    if (base.attempted) attempted.push({ recipient: r, outcome: o });
  }

  const notices: NoticePlan[] = [];
  if (failed.length > 0) {
    notices.push({
      action: 'failed',
      recipients: failed.map((f) => f.row),
      unwritten: failed.map((f) => ({ ...f.update, state: 'queued', nextAttempt: retryAt(f.row), owed: 'failed' })),
      uncommitted: failed.map((f) => ({ ...f.update, state: 'queued', nextAttempt: now, owed: 'failed' })),
    });
  }
  if (delayed.length > 0) {
    const notWarned = delayed.map((d) => ({ ...d.update, warned: false }));
    notices.push({ action: 'delayed', recipients: delayed.map((d) => d.row), unwritten: notWarned, uncommitted: notWarned });
  }
  return { kind: 'recorded', updates, notices, attempted };
}
