/*
 * `ichidan queue`: what is queued, and holding, releasing or purging it.
 *
 *   ichidan queue [status] [--json]               recipients per tenant and state, bounced ones per class; entries set aside as corrupt
 *   ichidan queue hold (--message ID | --tenant T | --site S) [--for D] [--reason R] [--json]
 *   ichidan queue release (--message ID | --tenant T | --site S) [--json]
 *   ichidan queue purge (--message ID | --tenant T | --site S) [--reason R] [--json]
 *   ichidan queue corrupt [list] | show|requeue|delete ID   entries set aside as corrupt (cli-corrupt.ts)
 *   ichidan queue list|show|why|flush|bounce|delete ...      message by message (cli-queue-inspect.ts,
 *                                                 loaded when one of them runs)
 * The counts are read from the queue database (no process needed); holds, releases and purges go
 * to the running process (admin/admin-queue.ts). Sites are named as `ichidan egress` lists them.
 * `addQueueCommands` gives the `queue` command, so a further subcommand is one `.command()` on it.
 */
import type { Command } from 'commander';
import { queueStatus } from '../../queue/queue-store-sql.js';
import { admin, commandConfig, openDb, printJson, safe, usage } from './cli-common.js';
import { addCorruptCommands } from './cli-corrupt.js';
import type { JsonOption, QueueActionOptions, QueueListOptions } from './cli-queue-inspect.js';

interface ScopeOptions {
  message?: string;
  tenant?: string;
  site?: string;
  for?: string;
  reason?: string;
  json?: boolean;
}

/** What a hold, release or purge applies to: one message, or a tenant, a site or a tenant at a site. */
function scoped(cmd: Command, reason: boolean, hold = false): Command {
  cmd.option('--message <id>', 'one message (its queue id)')
    .option('--tenant <name>', 'every message of a tenant')
    .option('--site <site>', 'every message for a site (as ichidan egress lists them)');
  if (hold) cmd.option('--for <duration>', 'lifted by itself after this long (e.g. 2h)');
  if (reason) cmd.option('--reason <text>', 'why, kept with the event');
  return cmd.option('--json', 'print the answer as JSON');
}

async function status(cmd: Command, opts: { json?: boolean }): Promise<void> {
  const db = await openDb((await commandConfig(cmd)).dataDir);
  const { counts, bounced, corrupt } = queueStatus(db);
  db.close();
  if (opts.json) return printJson({ counts, bounced, corrupt });
  for (const c of counts) process.stdout.write(`${c.tenant}\t${c.state}\t${c.n}\n`);
  for (const b of bounced) process.stdout.write(`bounced\t${b.tenant}\t${safe(b.class)}\t${b.n}\n`);
  for (const c of corrupt) process.stdout.write(`corrupt\t${c.id}\t${c.note}\n`);
}

async function act(action: 'hold' | 'release' | 'purge', cmd: Command, opts: ScopeOptions): Promise<void> {
  const { message, tenant, site, reason } = opts;
  if (!message && !tenant && !site) usage(`queue ${action}: name what it applies to: --message ID, --tenant T or --site S`);
  const body = await admin(await commandConfig(cmd), 'POST', `/v1/queue/${action}`, { message, tenant, site, reason, for: opts.for });
  if (opts.json) return printJson(body);
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

export function addQueueCommands(program: Command): Command {
  const queue = program.command('queue').description('what is queued; holding, releasing, purging it; entries set aside as corrupt');
  queue.command('status', { isDefault: true })
    .description('recipients per tenant and state, bounced ones per class, entries set aside as corrupt (read from the queue database)')
    .option('--json', 'print as JSON')
    .action((opts: { json?: boolean }, cmd: Command) => status(cmd, opts));
  scoped(queue.command('hold').description('hold queued mail (the running process)'), true, true)
    .action((opts: ScopeOptions, cmd: Command) => act('hold', cmd, opts));
  scoped(queue.command('release').description('release held mail and lift holds (the running process)'), false)
    .action((opts: ScopeOptions, cmd: Command) => act('release', cmd, opts));
  scoped(queue.command('purge').description('drop queued mail without a notice (the running process)'), true)
    .action((opts: ScopeOptions, cmd: Command) => act('purge', cmd, opts));
  addCorruptCommands(queue);
  addInspectCommands(queue);
  return queue;
}

/** The per-message commands (cli-queue-inspect.ts, which checks their values and says what is wrong). */
function addInspectCommands(queue: Command): void {
  const inspect = () => import('./cli-queue-inspect.js');
  queue.command('list').description('message by message: id, age, tenant, sender, recipients, size, state, next attempt, last reply (read from the queue database)')
    .option('--tenant <name>', 'one tenant\'s').option('--site <site>', 'for one site (as ichidan egress names them)')
    .option('--state <state>', 'in one state').option('--sender <text>', 'the sender contains this').option('--recipient <text>', 'a recipient contains this')
    .option('--older-than <duration>', 'received longer ago than this (e.g. 2h)').option('--newer-than <duration>', 'received more recently than this')
    .option('--limit <n>', 'how many (default 100)').option('--json', 'print as JSON')
    .action(async (opts: QueueListOptions, cmd: Command) => (await inspect()).queueList(await commandConfig(cmd), opts));
  queue.command('show').description('one message: envelope, stored headers, every attempt with its reply, sessions, scan record, why (read from the queue database)')
    .argument('<id>', 'queue id').option('--json', 'print as JSON')
    .action(async (id: string, opts: JsonOption, cmd: Command) => (await inspect()).queueShow(await commandConfig(cmd), id, opts));
  queue.command('why').description('one paragraph: why the message is where it is (read from the queue database)')
    .argument('<id>', 'queue id').option('--json', 'print as JSON')
    .action(async (id: string, opts: JsonOption, cmd: Command) => (await inspect()).queueWhy(await commandConfig(cmd), id, opts));
  const scope = (cmd: Command, reason: boolean) => {
    cmd.argument('[id]', 'one message (its queue id)').option('--tenant <name>', 'every message of a tenant').option('--site <site>', 'every message for a site');
    if (reason) cmd.option('--reason <text>', 'said in the log (and, for bounce, in the notice)');
    return cmd.option('--json', 'print the answer as JSON');
  };
  scope(queue.command('flush').description('retry now (the running process)'), false)
    .action(async (id: string | undefined, opts: QueueActionOptions, cmd: Command) => (await inspect()).queueFlush(await commandConfig(cmd), { ...opts, id }));
  scope(queue.command('bounce').description('fail now, with a delivery status notice to the sender (the running process)'), true)
    .action(async (id: string | undefined, opts: QueueActionOptions, cmd: Command) => (await inspect()).queueBounce(await commandConfig(cmd), { ...opts, id }));
  scope(queue.command('delete').description('remove without a notice, as postsuper -d (the running process)'), true)
    .action(async (id: string | undefined, opts: QueueActionOptions, cmd: Command) => (await inspect()).queueDelete(await commandConfig(cmd), { ...opts, id }));
}
