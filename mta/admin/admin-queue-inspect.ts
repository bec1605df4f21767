/*
 * The admin API's per-message queue routes: the queue read message by message, and the actions
 * an operator takes on queued mail besides hold, release and purge (admin-queue.ts).
 *
 *   GET  /v1/queue/messages?tenant=&site=&state=&sender=&recipient=&olderThan=&newerThan=&limit=
 *        → {messages: [{id, receivedAt, ageSeconds, tenant, sender, size, state, nextAttempt, lastReply,
 *           recipients: [{address, tenant, state, attempts, nextAttempt, lastReply, lastHost, bounceClass}]}]}
 *        oldest first; sender and recipient match part of an address; olderThan/newerThan are
 *        durations ("30m", "2d"); limit 1–1000 (default 100); state as queue/queue-inspect-sql.ts says.
 *   GET  /v1/queue/messages/ID → {…the above, envelope, headers, attempts, scan, sessions, why}
 *        (queue/queue-inspect.ts); 404 {error: "no message ID in the queue"}.
 *   POST /v1/queue/flush   {message} | {tenant?, site?}   queued recipients tried now → {flushed}
 *   POST /v1/queue/bounce  {message} | {tenant?, site?} [reason]   failed now, a notice to the
 *                          sender → {bounced, busy} (busy: an attempt was under way, left alone)
 *   POST /v1/queue/delete  {message} | {tenant?, site?} [reason]   removed, no notice (postsuper -d)
 *                          → {deleted, inFlight} (inFlight: recipients whose attempt was under way:
 *                          that copy may still reach its destination; nothing is sent afterwards)
 * A message this node does not hold is 404 for every route; an entry set aside as corrupt is 409
 * for the actions (see ichidan queue corrupt).
 * Takes: the queue (its database, spool, operator actions, the egress that names sites) and the
 * config (tenants, queue.maxAge).
 */
import { duration } from '../../base/base-config.js';
import type { Queue } from '../../queue/index.js';
import { MESSAGE_STATES, queueMessage, queueMessages, type MessageFilter, type MessageStateFilter } from '../../queue/queue-inspect.js';
import type { RecipientSelector } from '../../queue/queue-store.js';
import type { Config } from '../mta-config-schema.js';
import { actionScope, BadRequest, checkScope, text, type AdminAnswer, type AdminRoute } from './admin-request.js';

export interface QueueInspectTarget {
  readonly config: Pick<Config, 'tenants' | 'queue'>;
  readonly queue: Pick<Queue, 'store' | 'spool' | 'egress' | 'flush' | 'bounce' | 'purge' | 'inFlightOf' | 'domainsOfSite'>;
}

const MESSAGE = /^\/v1\/queue\/messages\/([0-9A-Za-z]{1,64})$/;
const ACTIONS = new Set(['/v1/queue/flush', '/v1/queue/bounce', '/v1/queue/delete']);
const MAX_LIMIT = 1000;

const noMessage = (id: string): AdminAnswer => [404, { error: `no message ${id} in the queue` }];

function durationParam(query: URLSearchParams, key: string): number | undefined {
  const v = query.get(key);
  if (v === null || v === '') return undefined;
  const parsed = duration.safeParse(/^\d+$/.test(v) ? Number(v) : v);
  if (!parsed.success) throw new BadRequest(`"${key}" must be a duration such as "30m" or "2d"`);
  return parsed.data;
}

/** The list's filter from the query string, checked. */
function filterOf(query: URLSearchParams, config: QueueInspectTarget['config']): MessageFilter & { site?: string } {
  const get = (key: string) => text(Object.fromEntries(query), key, 320);
  const tenant = get('tenant');
  const site = get('site');
  checkScope(config, tenant, site);
  const state = get('state');
  if (state !== undefined && !(MESSAGE_STATES as readonly string[]).includes(state)) throw new BadRequest(`"state" is one of ${MESSAGE_STATES.join(', ')}`);
  const limit = query.get('limit') === null ? 100 : Number(query.get('limit'));
  if (!Number.isInteger(limit) || limit < 1 || limit > MAX_LIMIT) throw new BadRequest(`"limit" is a whole number from 1 to ${MAX_LIMIT}`);
  return {
    tenant, site, state: state as MessageStateFilter | undefined, sender: get('sender'), recipient: get('recipient'),
    olderThan: durationParam(query, 'olderThan'), newerThan: durationParam(query, 'newerThan'), limit,
  };
}

/** The recipient selection of an action; undefined when a site has no mail in the queue. */
async function selection(queue: QueueInspectTarget['queue'], scope: { message?: string; tenant?: string; site?: string }): Promise<RecipientSelector | undefined> {
  if (scope.message !== undefined) return { messageId: scope.message };
  const domains = scope.site === undefined ? undefined : await queue.domainsOfSite(scope.site);
  if (domains !== undefined && domains.length === 0) return undefined;
  return { tenant: scope.tenant, domains };
}

const siteOf = (queue: QueueInspectTarget['queue']) => async (domain: string) => (await queue.egress.site(domain)).key;

export const queueInspectRoute: AdminRoute<QueueInspectTarget> = async ({ method, path, query, body }, { config, queue }) => {
  if (method === 'GET' && path === '/v1/queue/messages') {
    const { site, ...filter } = filterOf(query, config);
    const domains = site === undefined ? undefined : await queue.domainsOfSite(site);
    return [200, { messages: queueMessages(queue.store.db, { ...filter, domains }, Date.now()) }];
  }
  const one = method === 'GET' ? MESSAGE.exec(path) : null;
  if (one) {
    const detail = await queueMessage(queue.store.db, one[1], { now: Date.now(), maxAge: config.queue.maxAge, spoolDir: queue.spool.dir, siteOf: siteOf(queue) });
    return detail ? [200, detail] : noMessage(one[1]);
  }
  if (method !== 'POST' || !ACTIONS.has(path)) return null;
  const scope = actionScope(config, body);
  const reason = text(body, 'reason');
  if (scope.message !== undefined) {
    const entry = queue.store.message(scope.message);
    if (!entry) return noMessage(scope.message);
    if (entry.state === 'corrupt') return [409, { error: `message ${scope.message} is set aside as corrupt (${entry.corrupt_kind}: ${entry.note ?? ''}); see ichidan queue corrupt show ${scope.message}` }];
  }
  const select = await selection(queue, scope);
  const what = scope.message !== undefined ? `message ${scope.message}` : 'that selection';
  if (path === '/v1/queue/flush') {
    const flushed = select ? await queue.flush(select) : 0;
    return flushed > 0 || scope.message === undefined ? [200, { flushed }] : [404, { error: `no queued recipients in ${what} (held ones wait for a release)` }];
  }
  if (path === '/v1/queue/bounce') {
    const result = select ? await queue.bounce(select, reason) : { bounced: 0, busy: 0 };
    return result.bounced + result.busy > 0 || scope.message === undefined ? [200, result] : [404, { error: `no queued or held recipients in ${what}` }];
  }
  const inFlight = scope.message !== undefined ? queue.inFlightOf(scope.message) : 0;
  const deleted = select ? await queue.purge(select, `deleted by an operator${reason ? `: ${reason}` : ''}`) : 0;
  return [200, { deleted, inFlight }];
};
