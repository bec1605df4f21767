/*
 * `ichidan queue`: what is queued, and holding, releasing or purging it.
 *
 *   ichidan queue [-c FILE]                       recipients per tenant and state, bounced ones per class; entries set aside as corrupt
 *   ichidan queue hold (--message ID | --tenant T | --site S) [--for D] [--reason R]
 *   ichidan queue release (--message ID | --tenant T | --site S)
 *   ichidan queue purge (--message ID | --tenant T | --site S) [--reason R]
 *   ichidan queue corrupt [list] | show|requeue|delete ID   entries set aside as corrupt (cli-corrupt.ts)
 * The counts are read from the queue database (no process needed); holds, releases and purges go
 * to the running process (admin/admin-queue.ts). Sites are named as `ichidan egress` lists them.
 */
import { queueStatus } from '../../queue/queue-store-sql.js';
import { admin, openDb, options, safe, SCOPE_OPTIONS, usage } from './cli-common.js';
import { CORRUPT_USAGE, corruptCommand } from './cli-corrupt.js';

export const QUEUE_USAGE = `  ichidan queue [-c FILE]
  ichidan queue hold (--message ID | --tenant T | --site S) [--for DURATION] [--reason TEXT] [-c FILE]
  ichidan queue release (--message ID | --tenant T | --site S) [-c FILE]
  ichidan queue purge (--message ID | --tenant T | --site S) [--reason TEXT] [-c FILE]
${CORRUPT_USAGE}`;

export async function queueCommand(args: string[]): Promise<void> {
  const { config, values, positionals } = options(args, SCOPE_OPTIONS);
  const [action] = positionals;
  if (action === undefined) {
    const db = openDb(config.dataDir);
    const { counts, bounced, corrupt } = queueStatus(db);
    for (const c of counts) process.stdout.write(`${c.tenant}\t${c.state}\t${c.n}\n`);
    for (const b of bounced) process.stdout.write(`bounced\t${b.tenant}\t${safe(b.class)}\t${b.n}\n`);
    for (const c of corrupt) process.stdout.write(`corrupt\t${c.id}\t${c.note}\n`);
    db.close();
    return;
  }
  if (action === 'corrupt') return corruptCommand(config, positionals.slice(1));
  if (!['hold', 'release', 'purge'].includes(action)) usage(QUEUE_USAGE);
  const { message, tenant, site, reason } = values;
  const body = await admin(config, 'POST', `/v1/queue/${action}`, { message, tenant, site, reason, for: values.for });
  const what = message ? `message ${message}` : [tenant && `tenant ${tenant}`, site && `site ${site}`].filter(Boolean).join(' at ');
  if (action === 'hold') {
    process.stdout.write(body.held !== undefined ? `${what}: ${String(body.held)} recipients held\n` : `${what}: held (event ${String(body.event)})\n`);
  } else if (action === 'release') {
    process.stdout.write(body.released !== undefined && body.lifted === undefined
      ? `${what}: ${body.asked ? String(body.error) : `${String(body.released)} recipients released`}\n`
      : `${what}: ${String(body.lifted)} holds lifted, ${String(body.released)} held recipients released\n`);
  } else {
    process.stdout.write(`${what}: ${String(body.purged)} recipients purged\n`);
  }
}
