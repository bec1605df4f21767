/*
 * `ichidan egress`: the outbound side as it runs.
 *
 *   ichidan egress [status]                       pairs (site, source): window, limit, in flight; blocks in force
 *   ichidan egress events [--open] [--last N]     throttle reactions and holds, newest first (no process needed)
 *   ichidan egress undo ID                        lift what an event did
 * status and undo go to the running process (admin/admin-egress.ts); the events are read from the
 * queue database. In a cluster the actor shows the node that acted ("operator@n1"); an id is this
 * node's, and undoing it lifts the event on every node.
 */
import { readEgressEvents, type EgressEvent } from '../../queue/queue-records-egress.js';
import { admin, iso, openDb, options, safe, usage } from './cli-common.js';

export const EGRESS_USAGE = `  ichidan egress [status] [-c FILE]
  ichidan egress events [--open] [--last N] [-c FILE]
  ichidan egress undo ID [-c FILE]`;

function eventLine(e: EgressEvent): string {
  const scope = safe([e.tenant && `tenant=${e.tenant}`, e.site && `site=${e.site}`, e.source !== null && e.site && `source=${e.source || 'default'}`].filter(Boolean).join(' '));
  const until = e.until === null ? (e.kind === 'slowed' ? '' : 'until lifted') : `until ${iso(e.until)}`;
  const undone = e.undone_at === null ? '' : `\tundone ${iso(e.undone_at)} by ${safe(e.undone_by ?? '?')}`;
  const actor = e.origin ? `${e.actor}@${safe(e.origin)}` : e.actor;
  return `${e.id}\t${iso(e.at)}\t${e.kind}\t${actor}\t${scope}\t${until}\t${safe(e.reason)}${undone}`;
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
