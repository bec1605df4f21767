/*
 * `ichidan workers [--json]`: the workers a primary supervises on this machine (started
 * with `start --workers N`), read from its status file (mta-workers-status.ts): index, pid,
 * state, restarts, since when, node name and data folder, tab-separated. Exits 1 when no primary runs for this
 * config's data folder.
 */
import type { Command } from 'commander';
import { readWorkersStatus } from '../mta-workers-status.js';
import { commandConfig, iso, printJson } from './cli-common.js';

async function workers(cmd: Command, opts: { json?: boolean }): Promise<void> {
  const config = await commandConfig(cmd);
  const status = readWorkersStatus(config.dataDir);
  if (!status) {
    process.stderr.write(`no workers are running for ${config.dataDir} (ichidan start --workers N)\n`);
    process.exit(1);
  }
  if (opts.json) return printJson(status);
  const rows = [['WORKER', 'PID', 'STATE', 'RESTARTS', 'SINCE', 'NODE', 'DATADIR']];
  for (const w of status.workers) rows.push([String(w.index), w.pid === null ? '-' : String(w.pid), w.state, String(w.restarts), iso(w.startedAt), w.node, w.dataDir]);
  process.stdout.write(`primary ${status.primary} since ${iso(status.startedAt)}\n`);
  for (const r of rows) process.stdout.write(r.join('\t') + '\n');
}

export function addWorkersCommand(program: Command): void {
  program.command('workers').description('the workers a primary (start --workers N) supervises on this machine')
    .option('--json', 'print as JSON')
    .action((opts: { json?: boolean }, cmd: Command) => workers(cmd, opts));
}
