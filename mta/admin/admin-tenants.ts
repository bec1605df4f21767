/*
 * The admin API's tenant routes: stopping one tenant's outbound mail, everywhere or at one site.
 *
 *   POST /v1/tenants/NAME/suspend  {site?, for?, reason}   as a hold, recorded as a suspension
 *   POST /v1/tenants/NAME/resume   {site?}
 * Takes: the queue's egress control and the tenants the config names.
 */
import type { Queue } from '../../queue/index.js';
import type { Config } from '../mta-config-schema.js';
import { checkScope, forMs, text, type AdminRoute } from './admin-request.js';

export interface TenantsTarget {
  readonly config: Pick<Config, 'tenants'>;
  readonly queue: Pick<Queue, 'control'>;
}

const TENANT = /^\/v1\/tenants\/([A-Za-z0-9_-]{1,64})\/(suspend|resume)$/;

export const tenantsRoute: AdminRoute<TenantsTarget> = async ({ method, path, body }, { config, queue }) => {
  const tenantAction = TENANT.exec(path);
  if (method !== 'POST' || !tenantAction) return null;
  const [, tenant, action] = tenantAction;
  const site = text(body, 'site');
  checkScope(config, tenant, site);
  if (action === 'suspend') {
    const id = await queue.control.hold({ tenant, site, forMs: forMs(body), reason: text(body, 'reason') ?? 'suspended by an operator', kind: 'suspended' });
    return [200, { event: id, tenant, site: site ?? null }];
  }
  const lifted = await queue.control.release(tenant, site, 'operator');
  return lifted > 0 ? [200, { lifted }] : [404, { error: `tenant ${tenant} has no hold or suspension in force${site ? ` at ${site}` : ''}` }];
};
