/*
 * The admin API's suppression routes: each tenant's list of recipients its mail is no longer sent
 * to (queue/queue-suppression.ts).
 *
 *   GET  /v1/suppression?tenant=T&class=C&match=TEXT&expired=1&limit=N   entries, newest first
 *   POST /v1/suppression/add     {tenant, address, class?, expire?, reason?}
 *   POST /v1/suppression/import  {tenant, addresses: [...], class?, expire?, reason?}   at most 500 at a time
 *   POST /v1/suppression/remove  {tenant, address}          404 when the tenant has no entry for it
 * class: a bounce class (default bad-mailbox); expire: a duration ("30d"; "0": until removed),
 * default the tenant's suppression.expire. Every tenant must be one the config names (or _relay);
 * an address must look like local@domain. A bad field is 400 naming it.
 * Takes: the queue's suppressions; the tenants the config names and their suppression rules.
 */
import { duration } from '../../base/base-config.js';
import { BOUNCE_CLASSES, type BounceClass } from '../../queue/queue-classify.js';
import type { Queue } from '../../queue/index.js';
import type { SuppressionEntry } from '../../queue/queue-suppression.js';
import type { Config } from '../mta-config-schema.js';
import { BadRequest, checkScope, text, type AdminRoute } from './admin-request.js';

export interface SuppressionTarget {
  readonly config: Pick<Config, 'tenants'>;
  readonly queue: Pick<Queue, 'suppressions'>;
}

const MAX_IMPORT = 500;
const ADDRESS = /^[^\s@<>]{1,64}@[^\s@<>]{1,255}$/;

function tenantOf(body: Record<string, unknown>, config: SuppressionTarget['config']): string {
  const tenant = text(body, 'tenant', 64);
  if (!tenant) throw new BadRequest('"tenant" is required');
  checkScope(config, tenant, undefined);
  return tenant;
}

function address(v: unknown, key: string): string {
  if (typeof v !== 'string' || !ADDRESS.test(v.trim()) || v.length > 254) throw new BadRequest(`"${key}" must be an address such as "user@example.com"`);
  return v.trim();
}

function classOf(body: Record<string, unknown>): BounceClass {
  const c = text(body, 'class', 40) ?? 'bad-mailbox';
  if (!(BOUNCE_CLASSES as readonly string[]).includes(c)) throw new BadRequest(`"class" must be one of ${BOUNCE_CLASSES.join(', ')}`);
  return c as BounceClass;
}

function expiresAt(body: Record<string, unknown>, fallback: number, now: number): number | null {
  let ms = fallback;
  if (body.expire !== undefined && body.expire !== null && body.expire !== '') {
    const parsed = duration.safeParse(body.expire === '0' ? 0 : body.expire);
    if (!parsed.success) throw new BadRequest('"expire" must be a duration such as "30d" or "12h" ("0": until removed)');
    ms = parsed.data;
  }
  return ms > 0 ? now + ms : null;
}

export const suppressionRoute: AdminRoute<SuppressionTarget> = async ({ method, path, query, body }, { config, queue }) => {
  if (method === 'GET' && path === '/v1/suppression') {
    const tenant = query.get('tenant') ?? undefined;
    checkScope(config, tenant, undefined);
    const limit = Number(query.get('limit') ?? 1000);
    if (!Number.isInteger(limit) || limit < 1 || limit > 100_000) throw new BadRequest('"limit" must be a number from 1 to 100000');
    const entries = queue.suppressions.list({ tenant, class: query.get('class') ?? undefined, match: query.get('match') ?? undefined, expired: query.get('expired') === '1', limit });
    return [200, { entries }];
  }
  if (method !== 'POST' || !['/v1/suppression/add', '/v1/suppression/import', '/v1/suppression/remove'].includes(path)) return null;
  const tenant = tenantOf(body, config);
  if (path === '/v1/suppression/remove') {
    const a = address(body.address, 'address');
    return await queue.suppressions.remove(tenant, a) ? [200, { removed: a }] : [404, { error: `tenant ${tenant} has no suppression for ${a}` }];
  }
  const now = Date.now();
  const add = path === '/v1/suppression/add';
  let addresses: string[];
  if (add) addresses = [address(body.address, 'address')];
  else {
    if (!Array.isArray(body.addresses) || body.addresses.length === 0 || body.addresses.length > MAX_IMPORT) throw new BadRequest(`"addresses" must be a list of 1 to ${MAX_IMPORT} addresses`);
    addresses = body.addresses.map((a, i) => address(a, `addresses[${i}]`));
  }
  const cls = classOf(body);
  const until = expiresAt(body, queue.suppressions.rule(tenant).expire, now);
  const reason = text(body, 'reason') ?? (add ? 'added by an operator' : 'imported');
  const entries: SuppressionEntry[] = addresses.map((a) => ({ tenant, address: a, class: cls, reason, source: add ? 'operator' : 'import', created_at: now, expires_at: until }));
  return [200, { added: await queue.suppressions.add(entries), tenant, expiresAt: until }];
};
