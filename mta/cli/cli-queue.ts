/*
 * `ichidan queue`: what is queued, and holding, releasing or purging it.
 *
 *   ichidan queue [-c FILE]                       recipients per tenant and state, bounced ones per class; entries set aside as corrupt
 *   ichidan queue hold (--message ID | --tenant T | --site S) [--for D] [--reason R]
 *   ichidan queue release (--message ID | --tenant T | --site S)
 *   ichidan queue purge (--message ID | --tenant T | --site S) [--reason R]
 *   ichidan queue corrupt [list] | show|requeue|delete ID   entries set aside as corrupt (cli-corrupt.ts)
 *   ichidan queue list|show|why|flush|bounce|delete ...      message by message (cli-queue-inspect.ts)
 * The counts are read from the queue database (no process needed); holds, releases and purges go
 * to the running process (admin/admin-queue.ts). Sites are named as `ichidan egress` lists them.
 */
import { queueStatus } from '../../queue/queue-store-sql.js';
import { admin, openDb, options, safe, SCOPE_OPTIONS, usage } from './cli-common.js';
import { CORRUPT_USAGE, corruptCommand } from './cli-corrupt.js';
import { queueBounce, queueDelete, queueFlush, queueList, queueShow, queueWhy } from './cli-queue-inspect.js';

export const QUEUE_USAGE = `  ichidan queue [-c FILE]
  ichidan queue hold (--message ID | --tenant T | --site S) [--for DURATION] [--reason TEXT] [-c FILE]
  ichidan queue release (--message ID | --tenant T | --site S) [-c FILE]
  ichidan queue purge (--message ID | --tenant T | --site S) [--reason TEXT] [-c FILE]
${CORRUPT_USAGE}
  ichidan queue list [--tenant T] [--site S] [--state ST] [--sender TEXT] [--recipient TEXT] [--older-than D] [--newer-than D] [--limit N] [--json]
  ichidan queue show|why ID [--json]
  ichidan queue flush (ID | --tenant T | --site S) [--json]
  ichidan queue bounce|delete (ID | --tenant T | --site S) [--reason TEXT] [--json]`;

const INSPECT_OPTIONS = {
  ...SCOPE_OPTIONS, state: { type: 'string' }, sender: { type: 'string' }, recipient: { type: 'string' },
  'older-than': { type: 'string' }, 'newer-than': { type: 'string' }, limit: { type: 'string' },
} as const;

/** The per-message commands (cli-queue-inspect.ts); false when `action` is none of them. */
async function inspectCommand(action: string | undefined, args: string[]): Promise<boolean> {
  if (!['list', 'show', 'why', 'flush', 'bounce', 'delete'].includes(action ?? '')) return false;
  const json = args.includes('--json');
  const { config, values: v, positionals } = options(args.filter((a) => a !== '--json'), INSPECT_OPTIONS);
  const id = positionals[1] ?? v.message;
  if ((action === 'show' || action === 'why') && !id) usage(QUEUE_USAGE);
  if (action === 'list') await queueList(config, { tenant: v.tenant, site: v.site, state: v.state, sender: v.sender, recipient: v.recipient, olderThan: v['older-than'], newerThan: v['newer-than'], limit: v.limit, json });
  else if (action === 'show') await queueShow(config, id!, { json });
  else if (action === 'why') await queueWhy(config, id!, { json });
  else if (action === 'flush') await queueFlush(config, { id, tenant: v.tenant, site: v.site, json });
  else if (action === 'bounce') await queueBounce(config, { id, tenant: v.tenant, site: v.site, reason: v.reason, json });
  else await queueDelete(config, { id, tenant: v.tenant, site: v.site, reason: v.reason, json });
  return true;
}

export async function queueCommand(args: string[]): Promise<void> {
  if (await inspectCommand(args.find((a) => !a.startsWith('-')), args)) return;
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
