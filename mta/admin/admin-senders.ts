/*
 * The admin API's known-sender routes (mta/admission/admission-senders.ts): what was learned, and
 * an operator's say over it.
 *
 *   GET  /v1/senders?kind=K&standing=S&limit=N   entries, most recently seen first (limit 1–10000, default 100)
 *   GET  /v1/senders/entry?key=KEY               one entry; 404 when there is none
 *   POST /v1/senders/pin    {key, note?, by?}    known from now on, whatever it sends (an entry never seen is made)
 *   POST /v1/senders/block  {key, note?, by?}    never known, whatever it sends
 *   POST /v1/senders/forget {key, by?}           its counts and its mark are dropped; 404 when there is none
 * KEY: an address or network ("192.0.2.7" means its /24), user:NAME, domain:NAME, resolver:ADDR; a
 * KEY that names nothing is a 400 saying which forms exist. In a cluster pin, block and forget
 * reach every node (`shared` says whether Redis has it already, else it follows when Redis returns).
 * Takes: the process's KnownSenders (null when it keeps none: 404 naming why).
 */
import type { KnownSenders, SenderKind, SenderRef, Standing } from '../admission/admission-senders.js';
import { SENDER_KINDS } from '../admission/admission-senders-key.js';
import { STANDINGS } from '../admission/admission-senders-tally.js';
import { BadRequest, text, type AdminAnswer, type AdminRoute } from './admin-request.js';

export interface SendersTarget {
  readonly senders: KnownSenders | null;
}

const ACTION = /^\/v1\/senders\/(pin|block|forget)$/;

function keyOf(senders: KnownSenders, given: string | null | undefined): SenderRef {
  if (!given) throw new BadRequest('"key" is required: an address or network, user:NAME, domain:NAME or resolver:ADDR');
  const ref = senders.parseKey(given);
  if ('error' in ref) throw new BadRequest(ref.error);
  return ref;
}

function oneOf<T extends string>(name: string, value: string | null, allowed: readonly T[]): T | undefined {
  if (value === null || value === '') return undefined;
  if (!allowed.includes(value as T)) throw new BadRequest(`"${name}" must be one of ${allowed.join(', ')}`);
  return value as T;
}

export const sendersRoute: AdminRoute<SendersTarget> = async ({ method, path, query, body }, { senders }): Promise<AdminAnswer | null> => {
  if (path !== '/v1/senders' && !path.startsWith('/v1/senders/')) return null;
  if (!senders) return [404, { error: 'this process keeps no known senders' }];
  if (method === 'GET' && path === '/v1/senders') {
    const limit = Number(query.get('limit') ?? 100);
    if (!Number.isInteger(limit) || limit < 1 || limit > 10_000) throw new BadRequest('"limit" must be a number from 1 to 10000');
    const kind = oneOf<SenderKind>('kind', query.get('kind'), SENDER_KINDS);
    const standing = oneOf<Standing>('standing', query.get('standing'), STANDINGS);
    return [200, senders.list({ kind, standing, limit })];
  }
  if (method === 'GET' && path === '/v1/senders/entry') {
    const key = query.get('key');
    const view = senders.show(keyOf(senders, key));
    return view ? [200, { sender: view }] : [404, { error: `no known-sender entry for ${key}` }];
  }
  const action = ACTION.exec(path)?.[1];
  if (method !== 'POST' || !action) return null;
  const ref = keyOf(senders, text(body, 'key', 400));
  const by = text(body, 'by') ?? 'operator';
  if (action === 'forget') {
    const done = await senders.forget(ref, by);
    return done ? [200, { forgotten: done.view, shared: done.shared }] : [404, { error: `no known-sender entry for ${text(body, 'key', 400)}` }];
  }
  const { view, shared } = await senders.mark(ref, action === 'pin' ? 'pinned' : 'blocked', text(body, 'note') ?? null, by);
  return [200, { sender: view, shared }];
};
