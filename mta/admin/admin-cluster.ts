/*
 * The admin API's cluster routes: what the cluster looks like from this node, and draining it.
 *
 *   GET  /v1/cluster        the nodes the registry knows (alive or gone, load, queue, draining),
 *                           this node now, Redis's health; `problem` set (still 200) when the
 *                           node is not clustered or Redis is away
 *   GET  /v1/node/drain     the drain's progress (mta/mta-drain.ts)
 *   POST /v1/node/drain     start draining: 409 with the reason when it cannot (not clustered,
 *                           no cluster.secret, Redis away, no live peer), nothing changed
 *   POST /v1/node/undrain   take mail again
 * Takes: the running process's `clusterStatus` (mta/mta-cluster.ts) and its `drain`.
 */
import type { ClusterStatus } from '../mta-cluster.js';
import { DrainError, type Drain } from '../mta-drain.js';
import type { AdminRoute } from './admin-request.js';

export interface ClusterTarget {
  clusterStatus(): Promise<ClusterStatus>;
  readonly drain: Pick<Drain, 'start' | 'stop' | 'status'>;
}

export const clusterRoute: AdminRoute<ClusterTarget> = async ({ method, path }, target) => {
  if (method === 'GET' && path === '/v1/cluster') return [200, await target.clusterStatus()];
  if (path === '/v1/node/drain') {
    if (method === 'GET') return [200, target.drain.status()];
    if (method !== 'POST') return null;
    try {
      return [200, await target.drain.start()];
    } catch (err) {
      if (err instanceof DrainError) return [409, { error: err.message }];
      throw err;
    }
  }
  if (method === 'POST' && path === '/v1/node/undrain') return [200, await target.drain.stop()];
  return null;
};
