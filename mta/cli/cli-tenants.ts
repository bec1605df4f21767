/*
 * `ichidan tenants`: stopping one tenant's outbound mail, everywhere or at one site.
 *
 *   ichidan tenants suspend NAME [--site S] [--for D] --reason R [--json]
 *   ichidan tenants resume NAME [--site S] [--json]
 * Both go to the running process (admin/admin-tenants.ts); a suspension is an event that
 * `ichidan egress events` lists and `ichidan egress undo` lifts.
 */
import type { Command } from 'commander';
import { admin, commandConfig, printJson } from './cli-common.js';

interface TenantOptions {
  site?: string;
  for?: string;
  reason?: string;
  json?: boolean;
}

async function change(action: 'suspend' | 'resume', name: string, cmd: Command, opts: TenantOptions): Promise<void> {
  const body = await admin(await commandConfig(cmd), 'POST', `/v1/tenants/${encodeURIComponent(name)}/${action}`, { site: opts.site, for: opts.for, reason: opts.reason });
  if (opts.json) return printJson(body);
  const where = opts.site ? ` at ${opts.site}` : '';
  process.stdout.write(action === 'suspend' ? `${name}${where}: suspended (event ${String(body.event)})\n` : `${name}${where}: resumed (${String(body.lifted)} lifted)\n`);
}

export function addTenantsCommands(program: Command): Command {
  const tenants = program.command('tenants').description("stop or resume one tenant's outbound mail, everywhere or at one site");
  tenants.command('suspend').description('stop its outbound mail (the running process; an event egress events lists)')
    .argument('<name>', 'the tenant')
    .option('--site <site>', 'only at this site')
    .option('--for <duration>', 'lifted by itself after this long (e.g. 2h)')
    .requiredOption('--reason <text>', 'why, kept with the event')
    .option('--json', 'print the answer as JSON')
    .action((name: string, opts: TenantOptions, cmd: Command) => change('suspend', name, cmd, opts));
  tenants.command('resume').description('send its mail again (the running process)')
    .argument('<name>', 'the tenant')
    .option('--site <site>', 'only at this site')
    .option('--json', 'print the answer as JSON')
    .action((name: string, opts: TenantOptions, cmd: Command) => change('resume', name, cmd, opts));
  return tenants;
}
