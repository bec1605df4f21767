/*
 * The `ichidan` commands other than `start` (mta-main.ts runs that one through the daemon):
 * dispatch by the first word, one file per command group, and the usage text.
 *
 *   check-config, hash-password         cli-config.ts
 *   queue (hold, release, purge)        cli-queue.ts; queue corrupt: cli-corrupt.ts
 *   tenants (suspend, resume)           cli-tenants.ts
 *   suppression (list, add, remove, import)   cli-suppression.ts
 *   egress (status, events, undo)       cli-egress.ts
 *   quarantine (list, release)          cli-quarantine.ts
 *   scans show                          cli-scans.ts
 *   engines (list, disable, enable, events, stats)   cli-engines.ts
 *   reload                              cli-reload.ts
 *   sessions (list, show)               cli-sessions.ts
 *   workers                             cli-workers.ts
 *   cluster status, node (drain, undrain)   cli-cluster.ts
 *   admission status                    cli-admission.ts
 *   dkim record                         cli-dkim.ts
 *   senders (list, show, pin, block, forget)   cli-senders.ts
 * Every command talks to the running process's admin API (admin/admin-client.ts), reads the
 * workers' status file (mta-workers-status.ts) or reads the
 * queue database; none loads the daemon. `-c FILE` names the config (default config/default.yaml).
 */
import { ADMISSION_USAGE, admission } from './cli-admission.js';
import { CLUSTER_USAGE, cluster, node } from './cli-cluster.js';
import { CONFIG_USAGE, checkConfig, hashPassword } from './cli-config.js';
import { DKIM_USAGE, dkim } from './cli-dkim.js';
import { EGRESS_USAGE, egress } from './cli-egress.js';
import { ENGINES_USAGE, engines } from './cli-engines.js';
import { QUARANTINE_USAGE, quarantine } from './cli-quarantine.js';
import { QUEUE_USAGE, queueCommand } from './cli-queue.js';
import { RELOAD_USAGE, reload } from './cli-reload.js';
import { SCANS_USAGE, scans } from './cli-scans.js';
import { SENDERS_USAGE, senders } from './cli-senders.js';
import { SESSIONS_USAGE, sessions } from './cli-sessions.js';
import { TENANTS_USAGE, tenants } from './cli-tenants.js';
import { SUPPRESSION_USAGE, suppression } from './cli-suppression.js';
import { WORKERS_USAGE, workers } from './cli-workers.js';

export const USAGE = `usage:
  ichidan start [-c FILE] [--workers N|auto]
${CONFIG_USAGE}
${QUEUE_USAGE}
${TENANTS_USAGE}
${SUPPRESSION_USAGE}
${EGRESS_USAGE}
${QUARANTINE_USAGE}
${SCANS_USAGE}
${ENGINES_USAGE}
${RELOAD_USAGE}
${SESSIONS_USAGE}
${WORKERS_USAGE}
${CLUSTER_USAGE}
${ADMISSION_USAGE}
${DKIM_USAGE}
${SENDERS_USAGE}`;

const COMMANDS: Record<string, (args: string[]) => void | Promise<void>> = {
  'check-config': checkConfig,
  'hash-password': hashPassword,
  queue: queueCommand,
  tenants,
  suppression,
  egress,
  quarantine,
  scans,
  engines,
  reload,
  sessions,
  workers,
  cluster,
  node,
  admission,
  dkim,
  senders,
};

export async function runCommand(command: string | undefined, args: string[]): Promise<void> {
  const run = command === undefined ? undefined : COMMANDS[command];
  if (run) return run(args);
  if (command === 'help' || command === '--help' || command === '-h') {
    process.stdout.write(USAGE + '\n');
    return;
  }
  process.stderr.write(USAGE + '\n');
  process.exit(command ? 2 : 0);
}
