/*
 * The admin API's queue routes: holding, releasing and purging queued mail while the process runs.
 *
 *   POST /v1/messages/ID/release   held (quarantined) recipients of message ID back into the queue
 *   POST /v1/queue/hold     {message} | {tenant?, site?, for?, reason?}
 *                           a message: its queued recipients are held; a tenant, a site or a tenant
 *                           at a site: nothing of it is delivered until released (or `for` ends)
 *   POST /v1/queue/release  {message} | {tenant?, site?}   the reverse (a tenant's held recipients too)
 *   POST /v1/queue/purge    {message} | {tenant?, site?}   removed from the queue, no notice sent
 * Takes: the queue (its operator actions and egress control) and the tenants the config names.
 * Every hold of a tenant or a site is an event in the queue database (queue/queue-egress-control.ts).
 * In a cluster a message this node does not hold is released by the node that holds it
 * (mta/mta-shared.ts): 200 with that node's name once it answers, 202 when none answered in time.
 */
import type { Queue } from '../../queue/index.js';
import type { Config } from '../mta-config-schema.js';
import type { SharedState } from '../mta-shared.js';
import { actionScope, BadRequest, forMs, text, type AdminAnswer, type AdminRoute } from './admin-request.js';

export interface QueueTarget {
  readonly config: Pick<Config, 'tenants'>;
  readonly queue: Pick<Queue, 'releaseMessage' | 'holdRecipients' | 'release' | 'purge' | 'domainsOfSite' | 'store' | 'control'>;
  readonly shared: Pick<SharedState, 'release'> | null;
}

const RELEASE = /^\/v1\/messages\/([0-9A-Za-z]{1,64})\/release$/;
const ACTIONS = ['/v1/queue/hold', '/v1/queue/release', '/v1/queue/purge'];

/** One message's held recipients released, here or (in a cluster) on the node that holds it. */
async function releaseMessage(id: string, { queue, shared }: QueueTarget): Promise<AdminAnswer> {
  // Only a message this node has never had is asked of the cluster.
  if (shared && queue.store.message(id) === undefined) {
    const answer = await shared.release(id, 'operator');
    if ('released' in answer) return [200, answer];
    return [202, { asked: true, shared: answer.shared, error: `message ${id} is not held here; ${answer.shared ? 'the cluster was asked: the node that holds it releases it' : 'Redis is away: the request is shared when it returns'}` }];
  }
  const released = await queue.releaseMessage(id);
  return released > 0 ? [200, { released }] : [404, { error: `no held recipients in message ${id}` }];
}

export const queueRoute: AdminRoute<QueueTarget> = async ({ method, path, body }, target) => {
  const { config, queue } = target;
  if (method !== 'POST') return null;
  const release = RELEASE.exec(path);
  if (release) return releaseMessage(release[1], target);
  if (!ACTIONS.includes(path)) return null;
  const { message, tenant, site } = actionScope(config, body);
  if (message !== undefined && body.for !== undefined) throw new BadRequest('"for" applies to a tenant or a site; a held message waits until released');
  // A corrupt entry is not in the queue: hold, release and purge would report recipients and leave it.
  const entry = message === undefined ? undefined : queue.store.message(message);
  if (entry?.state === 'corrupt') {
    return [409, { error: `message ${message} is set aside as corrupt (${entry.corrupt_kind}: ${entry.note ?? ''}); see ichidan queue corrupt show ${message}, then requeue or delete it` }];
  }
  if (path === '/v1/queue/hold') {
    if (message !== undefined) {
      const n = await queue.holdRecipients({ messageId: message });
      return n > 0 ? [200, { held: n }] : [404, { error: `no queued recipients in message ${message}` }];
    }
    const id = await queue.control.hold({ tenant, site, forMs: forMs(body), reason: text(body, 'reason') ?? 'held by an operator' });
    return [200, { event: id }];
  }
  if (path === '/v1/queue/release') {
    if (message !== undefined) return releaseMessage(message, target);
    const lifted = await queue.control.release(tenant, site, 'operator');
    const released = site === undefined ? await queue.release(tenant ?? null, null) : 0;
    return lifted + released > 0 ? [200, { lifted, released }] : [404, { error: 'nothing held there' }];
  }
  const reason = `purged by an operator${text(body, 'reason') ? `: ${text(body, 'reason')}` : ''}`;
  if (message !== undefined) return [200, { purged: await queue.purge({ messageId: message }, reason) }];
  const domains = site === undefined ? undefined : await queue.domainsOfSite(site);
  if (domains !== undefined && domains.length === 0) return [200, { purged: 0 }];
  return [200, { purged: await queue.purge({ tenant, domains }, reason) }];
};
