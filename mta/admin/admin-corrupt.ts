/*
 * The admin API's routes for queue entries set aside as corrupt (queue/queue-corrupt.ts).
 *
 *   GET  /v1/queue/corrupt              every entry: id, kind (unacknowledged | damaged), note,
 *                                       when set aside, received, sender, size, open recipients
 *   GET  /v1/queue/corrupt/ID           one entry, the file that best matches it (spool or
 *                                       corrupt/ folder, size) and its first header lines
 *   POST /v1/queue/corrupt/ID/requeue   back into the queue (a damaged entry whose file of the
 *                                       recorded size is back); 409 with the reason otherwise
 *   POST /v1/queue/corrupt/ID/delete    record and files removed
 * Takes: the queue's corrupt-entry actions and its database (for the list).
 */
import type { Queue } from '../../queue/index.js';
import { readCorrupt } from '../../queue/queue-corrupt.js';
import type { AdminRoute } from './admin-request.js';

export interface CorruptTarget {
  readonly queue: Pick<Queue, 'corrupt' | 'store'>;
}

const ENTRY = /^\/v1\/queue\/corrupt\/([0-9A-Za-z]{1,64})(?:\/(requeue|delete))?$/;

export const corruptRoute: AdminRoute<CorruptTarget> = async ({ method, path }, { queue }) => {
  const corrupt = queue.corrupt;
  if (method === 'GET' && path === '/v1/queue/corrupt') return [200, { entries: readCorrupt(queue.store.db) }];
  const m = ENTRY.exec(path);
  if (!m) return null;
  const [, id, action] = m;
  if (method === 'GET' && action === undefined) {
    const shown = await corrupt.show(id);
    return shown ? [200, shown] : [404, { error: `no corrupt entry ${id}` }];
  }
  if (method !== 'POST' || action === undefined) return null;
  if (action === 'delete') {
    return await corrupt.delete(id) ? [200, { deleted: id }] : [404, { error: `no corrupt entry ${id}` }];
  }
  const result = await corrupt.requeue(id);
  if (result.ok) return [200, { requeued: id, recipients: result.recipients }];
  return [result.missing ? 404 : 409, { error: result.error }];
};
