/*
 * `ichidan queue`, `ichidan tenants` and `ichidan egress`: the queue and the outbound side.
 *
 *   ichidan queue [-c FILE]                       recipients per tenant and state; entries set aside as corrupt
 *   ichidan queue hold (--message ID | --tenant T | --site S) [--for D] [--reason R]
 *   ichidan queue release (--message ID | --tenant T | --site S)
 *   ichidan queue purge (--message ID | --tenant T | --site S) [--reason R]
 *   ichidan queue corrupt [list] | show|requeue|delete ID   entries set aside as corrupt (mta-cli-corrupt.ts)
 *   ichidan tenants suspend NAME [--site S] [--for D] --reason R
 *   ichidan tenants resume NAME [--site S]
 *   ichidan egress [status]                       pairs (site, source): window, limit, in flight; blocks in force
 *   ichidan egress events [--open] [--last N]     throttle reactions and holds, newest first (no process needed)
 *   ichidan egress undo ID                        lift what an event did
 * Holds, purges, suspensions and undos go to the running process (admin API); the lists of events
 * and of the queue are read from the queue database.
 */
import { queueStatus } from '../queue/queue-store-sql.js';
import { readEgressEvents, type EgressEvent } from '../queue/queue-store-egress.js';
import { admin, iso, openDb, options, safe, usage } from './mta-cli-common.js';
import { CORRUPT_USAGE, corruptCommand } from './mta-cli-corrupt.js';

export const EGRESS_USAGE = `  ichidan queue [-c FILE]
  ichidan queue hold (--message ID | --tenant T | --site S) [--for DURATION] [--reason TEXT] [-c FILE]
  ichidan queue release (--message ID | --tenant T | --site S) [-c FILE]
  ichidan queue purge (--message ID | --tenant T | --site S) [--reason TEXT] [-c FILE]
${CORRUPT_USAGE}
  ichidan tenants suspend NAME [--site S] [--for DURATION] --reason TEXT [-c FILE]
  ichidan tenants resume NAME [--site S] [-c FILE]
  ichidan egress [status] [-c FILE]
  ichidan egress events [--open] [--last N] [-c FILE]
  ichidan egress undo ID [-c FILE]`;

const SELECT = { message: { type: 'string' }, tenant: { type: 'string' }, site: { type: 'string' }, for: { type: 'string' }, reason: { type: 'string' } } as const;

export async function queueCommand(args: string[]): Promise<void> {
  const { config, values, positionals } = options(args, SELECT);
  const [action] = positionals;
  if (action === undefined) {
    const db = openDb(config.dataDir);
    const { counts, corrupt } = queueStatus(db);
    for (const c of counts) process.stdout.write(`${c.tenant}\t${c.state}\t${c.n}\n`);
    for (const c of corrupt) process.stdout.write(`corrupt\t${c.id}\t${c.note}\n`);
    db.close();
    return;
  }
  if (action === 'corrupt') return corruptCommand(config, positionals.slice(1));
  if (!['hold', 'release', 'purge'].includes(action)) usage(EGRESS_USAGE);
  const { message, tenant, site, reason } = values;
  const body = await admin(config, 'POST', `/v1/queue/${action}`, { message, tenant, site, reason, for: values.for });
  const what = message ? `message ${message}` : [tenant && `tenant ${tenant}`, site && `site ${site}`].filter(Boolean).join(' at ');
  if (action === 'hold') {
    process.stdout.write(body.held !== undefined ? `${what}: ${String(body.held)} recipients held\n` : `${what}: held (event ${String(body.event)})\n`);
  } else if (action === 'release') {
    process.stdout.write(body.released !== undefined && body.lifted === undefined
      ? `${what}: ${String(body.released)} recipients released\n`
      : `${what}: ${String(body.lifted)} holds lifted, ${String(body.released)} held recipients released\n`);
  } else {
    process.stdout.write(`${what}: ${String(body.purged)} recipients purged\n`);
  }
}

export async function tenants(args: string[]): Promise<void> {
  const { config, values, positionals } = options(args, SELECT);
  const [action, name] = positionals;
  if (!name || (action !== 'suspend' && action !== 'resume')) usage(EGRESS_USAGE);
  if (action === 'suspend' && !values.reason) usage('give a reason: ichidan tenants suspend NAME --reason TEXT');
  const body = await admin(config, 'POST', `/v1/tenants/${encodeURIComponent(name)}/${action}`, { site: values.site, for: values.for, reason: values.reason });
  const where = values.site ? ` at ${values.site}` : '';
  process.stdout.write(action === 'suspend' ? `${name}${where}: suspended (event ${String(body.event)})\n` : `${name}${where}: resumed (${String(body.lifted)} lifted)\n`);
}

function eventLine(e: EgressEvent): string {
  const scope = safe([e.tenant && `tenant=${e.tenant}`, e.site && `site=${e.site}`, e.source !== null && e.site && `source=${e.source || 'default'}`].filter(Boolean).join(' '));
  const until = e.until === null ? (e.kind === 'slowed' ? '' : 'until lifted') : `until ${iso(e.until)}`;
  const undone = e.undone_at === null ? '' : `\tundone ${iso(e.undone_at)} by ${safe(e.undone_by ?? '?')}`;
  return `${e.id}\t${iso(e.at)}\t${e.kind}\t${e.actor}\t${scope}\t${until}\t${safe(e.reason)}${undone}`;
}

export async function egress(args: string[]): Promise<void> {
  const { config, values, positionals } = options(args, { last: { type: 'string' }, open: { type: 'boolean' } } as never);
  const [action = 'status', id] = positionals;
  if (action === 'status') {
    const body = await admin(config, 'GET', '/v1/egress');
    process.stdout.write(`in flight ${String(body.active)}, waiting ${String(body.waiting)}\n`);
    process.stdout.write('site\tsource\twindow\tmax\tin_flight\n');
    for (const p of body.pairs as Array<{ site: string; source: string; window: number; maxConnections: number; active: number }>) {
      process.stdout.write(`${safe(p.site)}\t${p.source || 'default'}\t${p.window}\t${p.maxConnections}\t${p.active}\n`);
    }
    const blocks = body.blocks as Array<{ id: string; tenant?: string; site?: string; source?: string; until: number | null }>;
    if (blocks.length > 0) process.stdout.write('blocks in force:\n');
    for (const b of blocks) {
      const scope = safe([b.tenant && `tenant=${b.tenant}`, b.site && `site=${b.site}`, b.source !== undefined && `source=${b.source || 'default'}`].filter(Boolean).join(' '));
      process.stdout.write(`  ${scope}\t${b.until === null ? 'until lifted' : `until ${iso(b.until)}`}\n`);
    }
    return;
  }
  if (action === 'events') {
    const last = Number(values.last ?? 50);
    if (!Number.isInteger(last) || last < 1) usage('--last takes a positive number');
    const db = openDb(config.dataDir);
    const hasTable = db.prepare(`SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'egress_events'`).get() !== undefined;
    const rows = hasTable ? readEgressEvents(db, { limit: last, open: (values as Record<string, unknown>).open === true }) : [];
    db.close();
    process.stdout.write('id\tat\tkind\tactor\tscope\tuntil\treason\n');
    for (const e of rows) process.stdout.write(eventLine(e) + '\n');
    return;
  }
  if (action === 'undo' && id && /^\d+$/.test(id)) {
    const body = await admin(config, 'POST', `/v1/egress/events/${id}/undo`, { by: process.env.USER ?? 'operator' });
    process.stdout.write(`undone: ${eventLine(body.undone as EgressEvent)}\n`);
    return;
  }
  usage(EGRESS_USAGE);
}
