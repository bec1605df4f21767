/*
 * The tenant's suppression list at RCPT (queue/queue-suppression.ts keeps it): a recipient of a
 * tenant's own outbound mail — submitted with AUTH, or relayed from a trusted network or the
 * tenant's networks — that bounced for good with a hard class is refused with 550 5.1.1 naming
 * the suppression, when the tenant's action is refuse. Mail from elsewhere is not judged here
 * (the queue stops a suppressed recipient before delivery whatever the path), and a lookup is
 * always by the recipient's own tenant, never across tenants.
 *
 * The transparent proxy relays live, so it can bounce nothing later: its tenants' suppressed
 * recipients are refused at RCPT whatever the action (`suppressedLive`), and the legacy MTA
 * bounces them.
 * Takes: the queue's suppressions, the snapshot's policy, the RCPT decision, the client.
 * Gives: the refusal, or null; the lookup failing (the database unreadable) gives 451 4.3.0, logged.
 * Settings: suppression.action, tenants.*.suppression.action.
 */
import type { Logger } from 'pino';
import { REPLIES, type SmtpReply } from '../../base/base-reply.js';
import type { Queue } from '../../queue/index.js';
import type { ClientContext, Policy } from './ingress-policy.js';

export function suppressedAtRcpt(queue: Pick<Queue, 'suppressions'>, policy: Policy, rcpt: { tenant: string; address: string }, client: ClientContext, log: Logger): SmtpReply | null {
  if (client.authUser === null && !policy.isTrusted(client.address)) return null;
  return lookup(() => queue.suppressions.refusal(rcpt.tenant, rcpt.address), rcpt, client.address, log);
}

/** The proxy's RCPT: refused whatever the tenant's action. */
export function suppressedLive(queue: Pick<Queue, 'suppressions'>, rcpt: { tenant: string; address: string }, client: string, log: Logger): SmtpReply | null {
  return lookup(() => queue.suppressions.refusal(rcpt.tenant, rcpt.address, Date.now(), true), rcpt, client, log);
}

function lookup(refusal: () => SmtpReply | null, rcpt: { tenant: string; address: string }, client: string, log: Logger): SmtpReply | null {
  try {
    const r = refusal();
    if (r) log.info({ client, tenant: rcpt.tenant, rcpt: rcpt.address, reply: r.text }, 'recipient refused: suppressed');
    return r;
  } catch (err) {
    log.error({ err, tenant: rcpt.tenant, rcpt: rcpt.address }, 'suppression lookup failed');
    return REPLIES.localError;
  }
}
