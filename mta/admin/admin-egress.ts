/*
 * The admin API's egress routes: what the outbound side is doing, and undoing what it reacted to.
 *
 *   GET  /v1/egress                       pairs (site, source): window, limit, in flight; blocks in force
 *   GET  /v1/egress/events?open=1&last=N  throttle reactions and holds, newest first
 *   POST /v1/egress/events/ID/undo        lift what the event did (a pause, a suspension, a hold, a slow-down)
 * Takes: the queue's scheduler and egress control (queue/queue-egress-control.ts). Every undo is an
 * event in the queue database.
 */
import type { Queue } from '../../queue/index.js';
import { BadRequest, text, type AdminRoute } from './admin-request.js';

export interface EgressTarget {
  readonly queue: Pick<Queue, 'scheduler' | 'control'>;
}

const UNDO = /^\/v1\/egress\/events\/(\d{1,12})\/undo$/;

export const egressRoute: AdminRoute<EgressTarget> = async ({ method, path, query, body }, { queue }) => {
  if (method === 'GET' && path === '/v1/egress') {
    return [200, { pairs: queue.scheduler.pairs(), blocks: queue.scheduler.blocks(), waiting: queue.scheduler.waiting, active: queue.scheduler.active }];
  }
  if (method === 'GET' && path === '/v1/egress/events') {
    const last = Number(query.get('last') ?? 50);
    if (!Number.isInteger(last) || last < 1 || last > 10_000) throw new BadRequest('"last" must be a number from 1 to 10000');
    return [200, { events: queue.control.events({ limit: last, open: query.get('open') === '1' }) }];
  }
  const undo = UNDO.exec(path);
  if (method !== 'POST' || !undo) return null;
  const event = await queue.control.undo(Number(undo[1]), text(body, 'by') ?? 'operator');
  return event ? [200, { undone: event }] : [404, { error: `no event ${undo[1]} in force (unknown, or already undone)` }];
};
