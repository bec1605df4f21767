/*
 * The admin API's egress and queue routes: what an operator does to outbound mail while it runs.
 *
 *   GET  /v1/egress                      pairs (site, source): window, limit, in flight; blocks in force
 *   GET  /v1/egress/events?open=1&last=N  throttle reactions and holds, newest first
 *   POST /v1/egress/events/ID/undo       lift what the event did (a pause, a suspension, a hold, a slow-down)
 *   POST /v1/queue/hold     {message} | {tenant?, site?, for?, reason?}
 *                           a message: its queued recipients are held; a tenant, a site or a tenant
 *                           at a site: nothing of it is delivered until released (or `for` ends)
 *   POST /v1/queue/release  {message} | {tenant?, site?}   the reverse (a tenant's held recipients too)
 *   POST /v1/queue/purge    {message} | {tenant?, site?}   removed from the queue, no notice sent
 *   POST /v1/tenants/NAME/suspend  {site?, for?, reason}   as a hold, recorded as a suspension
 *   POST /v1/tenants/NAME/resume   {site?}
 *   /v1/queue/corrupt…             entries set aside as corrupt (mta-admin-corrupt.ts)
 * Sites are named as `ichidan egress` lists them ("mx:mx1.example.net", "site:google", ...).
 * Every hold, suspension and undo is an event in the queue database.
 */
import { handleCorrupt } from './mta-admin-corrupt.js';
import { duration } from '../base/base-config.js';
import type { Ichidan } from './index.js';

const UNDO = /^\/v1\/egress\/events\/(\d{1,12})\/undo$/;
const TENANT = /^\/v1\/tenants\/([A-Za-z0-9_-]{1,64})\/(suspend|resume)$/;

export type AdminAnswer = [status: number, body: unknown];

class BadRequest extends Error {}

function text(body: Record<string, unknown>, key: string, max = 300): string | undefined {
  const v = body[key];
  if (v === undefined || v === null || v === '') return undefined;
  if (typeof v !== 'string' || v.length > max) throw new BadRequest(`"${key}" must be a string of at most ${max} characters`);
  return v.trim();
}

function forMs(body: Record<string, unknown>): number | undefined {
  if (body.for === undefined) return undefined;
  const parsed = duration.safeParse(body.for);
  if (!parsed.success || parsed.data <= 0) throw new BadRequest('"for" must be a duration such as "30m" or "4h"');
  return parsed.data;
}

const SITE_KEY = /^(mx|route|site|domain|addr):\S+$/;

/** A tenant the config knows (or `_relay`), and a site key in the form `ichidan egress` shows. */
function checkScope(app: Ichidan, tenant: string | undefined, site: string | undefined): void {
  if (tenant !== undefined && tenant !== '_relay' && !(tenant in app.config.tenants)) {
    throw new BadRequest(`no tenant "${tenant}" (tenants: ${['_relay', ...Object.keys(app.config.tenants)].join(', ')})`);
  }
  if (site !== undefined && !SITE_KEY.test(site)) throw new BadRequest(`"${site}" is not a site: sites look like "mx:mx1.example.net", "site:NAME", "route:host:port" (see ichidan egress)`);
}

export async function handleEgress(method: string, url: string, body: Record<string, unknown>, app: Ichidan): Promise<AdminAnswer | null> {
  try {
    return await route(method, url, body, app);
  } catch (err) {
    if (err instanceof BadRequest) return [400, { error: err.message }];
    throw err;
  }
}

async function route(method: string, url: string, body: Record<string, unknown>, app: Ichidan): Promise<AdminAnswer | null> {
  const queue = app.queue;
  const [path, query = ''] = url.split('?');
  const corrupt = await handleCorrupt(method, path, app);
  if (corrupt) return corrupt;
  if (method === 'GET' && path === '/v1/egress') {
    return [200, { pairs: queue.scheduler.pairs(), blocks: queue.scheduler.blocks(), waiting: queue.scheduler.waiting, active: queue.scheduler.active }];
  }
  if (method === 'GET' && path === '/v1/egress/events') {
    const q = new URLSearchParams(query);
    const last = Number(q.get('last') ?? 50);
    if (!Number.isInteger(last) || last < 1 || last > 10_000) throw new BadRequest('"last" must be a number from 1 to 10000');
    return [200, { events: queue.control.events({ limit: last, open: q.get('open') === '1' }) }];
  }
  const undo = UNDO.exec(path);
  if (method === 'POST' && undo) {
    const event = await queue.control.undo(Number(undo[1]), text(body, 'by') ?? 'operator');
    return event ? [200, { undone: event }] : [404, { error: `no event ${undo[1]} in force (unknown, or already undone)` }];
  }
  const tenantAction = TENANT.exec(path);
  if (method === 'POST' && tenantAction) {
    const [, tenant, action] = tenantAction;
    const site = text(body, 'site');
    checkScope(app, tenant, site);
    if (action === 'suspend') {
      const id = await queue.control.hold({ tenant, site, forMs: forMs(body), reason: text(body, 'reason') ?? 'suspended by an operator', kind: 'suspended' });
      return [200, { event: id, tenant, site: site ?? null }];
    }
    const lifted = await queue.control.release(tenant, site, 'operator');
    return lifted > 0 ? [200, { lifted }] : [404, { error: `tenant ${tenant} has no hold or suspension in force${site ? ` at ${site}` : ''}` }];
  }
  if (method !== 'POST' || !['/v1/queue/hold', '/v1/queue/release', '/v1/queue/purge'].includes(path)) return null;
  const message = text(body, 'message', 64);
  const tenant = text(body, 'tenant', 64);
  const site = text(body, 'site');
  if (message !== undefined && (tenant !== undefined || site !== undefined)) throw new BadRequest('give a message, or a tenant and/or a site, not both');
  if (message === undefined && tenant === undefined && site === undefined) throw new BadRequest('give a message, a tenant or a site');
  if (message !== undefined && body.for !== undefined) throw new BadRequest('"for" applies to a tenant or a site; a held message waits until released');
  checkScope(app, tenant, site);
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
    if (message !== undefined) {
      const n = await queue.releaseMessage(message);
      return n > 0 ? [200, { released: n }] : [404, { error: `no held recipients in message ${message}` }];
    }
    const lifted = await queue.control.release(tenant, site, 'operator');
    const released = site === undefined ? await queue.release(tenant ?? null, null) : 0;
    return lifted + released > 0 ? [200, { lifted, released }] : [404, { error: 'nothing held there' }];
  }
  const reason = `purged by an operator${text(body, 'reason') ? `: ${text(body, 'reason')}` : ''}`;
  if (message !== undefined) return [200, { purged: await queue.purge({ messageId: message }, reason) }];
  const domains = site === undefined ? undefined : await queue.domainsOfSite(site);
  if (domains !== undefined && domains.length === 0) return [200, { purged: 0 }];
  return [200, { purged: await queue.purge({ tenant, domains }, reason) }];
}
