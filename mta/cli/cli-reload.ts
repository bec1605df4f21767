/*
 * `ichidan reload [--json]`: the running process re-reads its config file (as on SIGHUP) and says
 * which changed settings need a restart (admin/admin-reload.ts, mta-reload.ts).
 */
import type { Command } from 'commander';
import { admin, commandConfig, printJson } from './cli-common.js';

async function reload(cmd: Command, opts: { json?: boolean }): Promise<void> {
  const body = await admin(await commandConfig(cmd), 'POST', '/v1/reload');
  if (opts.json) return printJson(body);
  const restart = body.needsRestart as string[];
  process.stdout.write(`reloaded: generation ${String(body.generation)}${restart.length ? `; needs a restart to apply: ${restart.join(', ')}` : ''}\n`);
}

export function addReloadCommand(program: Command): void {
  program.command('reload').description('the running process re-reads its config file (as on SIGHUP); says what needs a restart')
    .option('--json', 'print the answer as JSON')
    .action((opts: { json?: boolean }, cmd: Command) => reload(cmd, opts));
}
