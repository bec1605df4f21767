/*
 * The admin API's engine routes: what the operator sees of the scanning engines and switches.
 *
 *   GET  /v1/engines                each engine: state, breaker, last error, version, counters
 *   POST /v1/engines/NAME/disable   body {"reason": "..."}: skipped from the next scan on (persisted)
 *   POST /v1/engines/NAME/enable
 * Takes: the process's engine host (engines/engines-host.ts keeps the switches in the queue
 *   database) and the generation of the config snapshot in force.
 */
import type { EngineHost } from '../../engines/index.js';
import type { AdminRoute } from './admin-request.js';

export interface EnginesTarget {
  readonly generation: number;
  readonly engines: Pick<EngineHost, 'list' | 'disable' | 'enable'>;
}

const ENGINE = /^\/v1\/engines\/([A-Za-z0-9_-]{1,64})\/(disable|enable)$/;

export const enginesRoute: AdminRoute<EnginesTarget> = async ({ method, path, body }, target) => {
  if (method === 'GET' && path === '/v1/engines') return [200, { generation: target.generation, engines: target.engines.list() }];
  const engine = ENGINE.exec(path);
  if (method !== 'POST' || !engine) return null;
  const [, name, action] = engine;
  if (action === 'disable') {
    const reason = typeof body.reason === 'string' && body.reason.trim() ? body.reason.trim().slice(0, 500) : 'no reason given';
    return target.engines.disable(name, reason)
      ? [200, { engine: name, state: 'disabled', reason }]
      : [404, { error: `no engine named ${name}` }];
  }
  return target.engines.enable(name)
    ? [200, { engine: name, state: 'enabled' }]
    : [404, { error: `engine ${name} is not disabled` }];
};
