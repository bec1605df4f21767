/*
 * `ichidan senders`: the known senders the running process learned, and an operator's say over them.
 *
 *   ichidan senders list [--kind K] [--standing S] [--limit N] [--json]   most recently seen first
 *   ichidan senders show KEY [--json]
 *   ichidan senders pin KEY [--note TEXT]       known from now on (an entry never seen is made)
 *   ichidan senders block KEY [--note TEXT]     never known
 *   ichidan senders forget KEY                  its counts and its mark are dropped
 * KEY: an address or network (192.0.2.7 means its /24, admission.senders.ipv4Prefix), user:NAME,
 * domain:example.com, resolver:ADDR. Everything goes to the running process
 * (admin/admin-senders.ts); a KEY that names nothing, or no such entry, is exit 1 with the reason.
 * In a cluster pin, block and forget reach every node.
 */
import type { Command } from 'commander';
import type { SenderView } from '../admission/admission-senders.js';
import { admin, commandConfig, iso, safe } from './cli-common.js';

const HEADER = 'key\tstanding\tclean\trefused\tspam\tscore\tfirst_seen\tlast_seen\tmark';

function line(v: SenderView): string {
  const mark = v.mark ? `${v.mark.flag} by ${safe(v.mark.by)} ${iso(v.mark.at)}${v.mark.note ? `: ${safe(v.mark.note)}` : ''}` : '';
  const when = (ms: number | null) => (ms === null ? '-' : iso(ms));
  return [safe(v.key), v.standing, v.clean, v.refused, v.spam, v.score ?? '-', when(v.firstSeen), when(v.lastSeen), mark].join('\t');
}

interface ListOptions {
  kind?: string;
  standing?: string;
  limit?: string;
  json?: boolean;
}

async function list(cmd: Command, opts: ListOptions): Promise<void> {
  const query = new URLSearchParams();
  // Passed as given: the running process checks them and says what is allowed.
  for (const name of ['kind', 'standing', 'limit'] as const) if (opts[name] !== undefined) query.set(name, opts[name]);
  const body = await admin(await commandConfig(cmd), 'GET', `/v1/senders${query.size > 0 ? `?${query}` : ''}`);
  if (opts.json) return void process.stdout.write(JSON.stringify(body) + '\n');
  process.stdout.write(HEADER + '\n');
  for (const v of body.senders as SenderView[]) process.stdout.write(line(v) + '\n');
  const shown = (body.senders as SenderView[]).length;
  if (Number(body.total) > shown) process.stdout.write(`(${shown} of ${String(body.total)}; --limit shows more)\n`);
}

async function show(key: string, cmd: Command, opts: { json?: boolean }): Promise<void> {
  const body = await admin(await commandConfig(cmd), 'GET', `/v1/senders/entry?key=${encodeURIComponent(key)}`);
  const v = body.sender as SenderView;
  if (opts.json) return void process.stdout.write(JSON.stringify(v) + '\n');
  process.stdout.write(`${HEADER}\n${line(v)}\n`);
  if (v.pairs?.length) process.stdout.write(`paired with: ${v.pairs.map(safe).join(' ')}\n`);
}

async function mark(action: 'pin' | 'block' | 'forget', key: string, cmd: Command, opts: { note?: string; json?: boolean }): Promise<void> {
  const config = await commandConfig(cmd);
  const by = process.env.USER ?? 'operator';
  const body = await admin(config, 'POST', `/v1/senders/${action}`, { key, by, ...(action !== 'forget' && opts.note ? { note: opts.note } : {}) });
  if (opts.json) return void process.stdout.write(JSON.stringify(body) + '\n');
  const v = (body.sender ?? body.forgotten) as SenderView;
  const done = action === 'pin' ? 'pinned' : action === 'block' ? 'blocked' : 'forgotten';
  const later = body.shared === false && config.cluster.redis !== undefined ? ' (here; the other nodes get it when Redis is back)' : '';
  process.stdout.write(`${safe(v.key)}: ${done}${later}\n`);
}

const KEY = 'an address or network (192.0.2.7 means its /24), user:NAME, domain:example.com, resolver:ADDR';

export function addSendersCommands(program: Command): Command {
  const senders = program.command('senders').description('the known senders the running process learned, and an operator\'s say over them');
  senders.command('list').description('most recently seen first')
    .option('--kind <kind>', 'network, user, domain or resolver').option('--standing <standing>', 'pinned, known, unknown or blocked')
    .option('--limit <n>', 'how many (1 to 10000)').option('--json', 'print as JSON')
    .action((opts: ListOptions, cmd: Command) => list(cmd, opts));
  senders.command('show').description('one entry: its counts, its mark, what it is paired with')
    .argument('<key>', KEY).option('--json', 'print as JSON')
    .action((key: string, opts: { json?: boolean }, cmd: Command) => show(key, cmd, opts));
  senders.command('pin').description('known from now on (an entry never seen is made); in a cluster, on every node')
    .argument('<key>', KEY).option('--note <text>', 'kept with the mark').option('--json', 'print the answer as JSON')
    .action((key: string, opts: { note?: string; json?: boolean }, cmd: Command) => mark('pin', key, cmd, opts));
  senders.command('block').description('never known; in a cluster, on every node')
    .argument('<key>', KEY).option('--note <text>', 'kept with the mark').option('--json', 'print the answer as JSON')
    .action((key: string, opts: { note?: string; json?: boolean }, cmd: Command) => mark('block', key, cmd, opts));
  senders.command('forget').description('its counts and its mark are dropped; in a cluster, on every node')
    .argument('<key>', KEY).option('--json', 'print the answer as JSON')
    .action((key: string, opts: { json?: boolean }, cmd: Command) => mark('forget', key, cmd, opts));
  return senders;
}
