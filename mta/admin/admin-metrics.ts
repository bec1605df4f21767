/*
 * The admin API's metrics route.
 *
 *   GET /metrics   every metric of the process (mta-metrics.ts) in Prometheus text format
 */
import type { Registry } from 'prom-client';
import type { AdminRoute } from './admin-request.js';

export interface MetricsTarget {
  readonly metrics: Pick<Registry, 'metrics' | 'contentType'>;
}

export const metricsRoute: AdminRoute<MetricsTarget> = async ({ method, path }, target) => {
  if (method !== 'GET' || path !== '/metrics') return null;
  return { status: 200, contentType: target.metrics.contentType, text: await target.metrics.metrics() };
};
