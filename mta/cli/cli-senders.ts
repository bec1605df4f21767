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
import type { SenderView } from '../admission/admission-senders.js';
import { admin, iso, options, safe, usage } from './cli-common.js';

export const SENDERS_USAGE = `  ichidan senders list [--kind network|user|domain|resolver] [--standing pinned|known|unknown|blocked] [--limit N] [--json] [-c FILE]
  ichidan senders show KEY [--json] [-c FILE]
  ichidan senders pin KEY [--note TEXT] [-c FILE]
  ichidan senders block KEY [--note TEXT] [-c FILE]
  ichidan senders forget KEY [-c FILE]
      KEY: an address or network (192.0.2.7 means its /24), user:NAME, domain:example.com, resolver:ADDR`;

const HEADER = 'key\tstanding\tclean\trefused\tspam\tscore\tfirst_seen\tlast_seen\tmark';

function line(v: SenderView): string {
  const mark = v.mark ? `${v.mark.flag} by ${safe(v.mark.by)} ${iso(v.mark.at)}${v.mark.note ? `: ${safe(v.mark.note)}` : ''}` : '';
  const when = (ms: number | null) => (ms === null ? '-' : iso(ms));
  return [safe(v.key), v.standing, v.clean, v.refused, v.spam, v.score ?? '-', when(v.firstSeen), when(v.lastSeen), mark].join('\t');
}

export async function senders(args: string[]): Promise<void> {
  const { config, values, positionals } = options(args, {
    kind: { type: 'string' }, standing: { type: 'string' }, limit: { type: 'string' }, note: { type: 'string' }, json: { type: 'boolean' },
  } as never);
  const json = (values as Record<string, unknown>).json === true;
  const [action, key] = positionals;
  if (action === 'list' && !key) {
    const query = new URLSearchParams();
    for (const name of ['kind', 'standing', 'limit'] as const) if (values[name] !== undefined) query.set(name, values[name]!);
    const body = await admin(config, 'GET', `/v1/senders${query.size > 0 ? `?${query}` : ''}`);
    if (json) return void process.stdout.write(JSON.stringify(body) + '\n');
    process.stdout.write(HEADER + '\n');
    for (const v of body.senders as SenderView[]) process.stdout.write(line(v) + '\n');
    const shown = (body.senders as SenderView[]).length;
    if (Number(body.total) > shown) process.stdout.write(`(${shown} of ${String(body.total)}; --limit shows more)\n`);
    return;
  }
  if (!key) usage(SENDERS_USAGE);
  if (action === 'show') {
    const body = await admin(config, 'GET', `/v1/senders/entry?key=${encodeURIComponent(key)}`);
    const v = body.sender as SenderView;
    if (json) return void process.stdout.write(JSON.stringify(v) + '\n');
    process.stdout.write(`${HEADER}\n${line(v)}\n`);
    if (v.pairs?.length) process.stdout.write(`paired with: ${v.pairs.map(safe).join(' ')}\n`);
    return;
  }
  if (action === 'pin' || action === 'block' || action === 'forget') {
    const by = process.env.USER ?? 'operator';
    const body = await admin(config, 'POST', `/v1/senders/${action}`, { key, by, ...(action !== 'forget' && values.note ? { note: values.note } : {}) });
    const v = (body.sender ?? body.forgotten) as SenderView;
    const done = action === 'pin' ? 'pinned' : action === 'block' ? 'blocked' : 'forgotten';
    const later = body.shared === false && config.cluster.redis !== undefined ? ' (here; the other nodes get it when Redis is back)' : '';
    process.stdout.write(`${safe(v.key)}: ${done}${later}\n`);
    return;
  }
  usage(SENDERS_USAGE);
}
