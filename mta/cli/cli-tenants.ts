/*
 * `ichidan tenants`: stopping one tenant's outbound mail, everywhere or at one site.
 *
 *   ichidan tenants suspend NAME [--site S] [--for D] --reason R
 *   ichidan tenants resume NAME [--site S]
 * Both go to the running process (admin/admin-tenants.ts); a suspension is an event that
 * `ichidan egress events` lists and `ichidan egress undo` lifts.
 */
import { admin, options, SCOPE_OPTIONS, usage } from './cli-common.js';

export const TENANTS_USAGE = `  ichidan tenants suspend NAME [--site S] [--for DURATION] --reason TEXT [-c FILE]
  ichidan tenants resume NAME [--site S] [-c FILE]`;

export async function tenants(args: string[]): Promise<void> {
  const { config, values, positionals } = options(args, SCOPE_OPTIONS);
  const [action, name] = positionals;
  if (!name || (action !== 'suspend' && action !== 'resume')) usage(TENANTS_USAGE);
  if (action === 'suspend' && !values.reason) usage('give a reason: ichidan tenants suspend NAME --reason TEXT');
  const body = await admin(config, 'POST', `/v1/tenants/${encodeURIComponent(name)}/${action}`, { site: values.site, for: values.for, reason: values.reason });
  const where = values.site ? ` at ${values.site}` : '';
  process.stdout.write(action === 'suspend' ? `${name}${where}: suspended (event ${String(body.event)})\n` : `${name}${where}: resumed (${String(body.lifted)} lifted)\n`);
}
