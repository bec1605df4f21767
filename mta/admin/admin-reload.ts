/*
 * The admin API's reload route.
 *
 *   POST /v1/reload   re-read the config file (200 with the new generation and what needs a
 *                     restart; 422 with the problems, nothing changed)
 * Takes: the running process's `reload` (mta-reload.ts reads, validates and publishes).
 */
import type { ReloadResult } from '../mta-reload.js';
import type { AdminRoute } from './admin-request.js';

export interface ReloadTarget {
  reload(): ReloadResult;
}

export const reloadRoute: AdminRoute<ReloadTarget> = async ({ method, path }, target) => {
  if (method !== 'POST' || path !== '/v1/reload') return null;
  const result = target.reload();
  return [result.ok ? 200 : 422, result];
};
