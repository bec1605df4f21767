/*
 * `ichidan egress`: the outbound side as it runs.
 *
 *   ichidan egress [status] [--json]              pairs (site, source): window, limit, in flight; blocks in force
 *   ichidan egress events [--open] [--last N] [--json]   throttle reactions and holds, newest first (no process needed)
 *   ichidan egress undo ID [--json]               lift what an event did
 * status and undo go to the running process (admin/admin-egress.ts); the events are read from the
 * queue database. In a cluster the actor shows the node that acted ("operator@n1"); an id is this
 * node's, and undoing it lifts the event on every node.
 */
import type { Command } from 'commander';
import { readEgressEvents, type EgressEvent } from '../../queue/queue-records-egress.js';
import { admin, commandConfig, iso, openDb, positiveInt, printJson, safe, usage } from './cli-common.js';

function eventLine(e: EgressEvent): string {
  const scope = safe([e.tenant && `tenant=${e.tenant}`, e.site && `site=${e.site}`, e.source !== null && e.site && `source=${e.source || 'default'}`].filter(Boolean).join(' '));
  const until = e.until === null ? (e.kind === 'slowed' ? '' : 'until lifted') : `until ${iso(e.until)}`;
  const undone = e.undone_at === null ? '' : `\tundone ${iso(e.undone_at)} by ${safe(e.undone_by ?? '?')}`;
  const actor = e.origin ? `${e.actor}@${safe(e.origin)}` : e.actor;
  return `${e.id}\t${iso(e.at)}\t${e.kind}\t${actor}\t${scope}\t${until}\t${safe(e.reason)}${undone}`;
}

async function status(cmd: Command, opts: { json?: boolean }): Promise<void> {
  const body = await admin(await commandConfig(cmd), 'GET', '/v1/egress');
  if (opts.json) return printJson(body);
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
}

async function events(cmd: Command, opts: { last: number; open?: boolean; json?: boolean }): Promise<void> {
  const db = await openDb((await commandConfig(cmd)).dataDir);
  const hasTable = db.prepare(`SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'egress_events'`).get() !== undefined;
  const rows = hasTable ? readEgressEvents(db, { limit: opts.last, open: opts.open === true }) : [];
  db.close();
  if (opts.json) return printJson(rows);
  process.stdout.write('id\tat\tkind\tactor\tscope\tuntil\treason\n');
  for (const e of rows) process.stdout.write(eventLine(e) + '\n');
}

async function undo(id: string, cmd: Command, opts: { json?: boolean }): Promise<void> {
  if (!/^\d+$/.test(id)) usage(`egress undo: "${id}" is not an event id (a number, as ichidan egress events lists them)`);
  const body = await admin(await commandConfig(cmd), 'POST', `/v1/egress/events/${id}/undo`, { by: process.env.USER ?? 'operator' });
  if (opts.json) return printJson(body);
  process.stdout.write(`undone: ${eventLine(body.undone as EgressEvent)}\n`);
}

export function addEgressCommands(program: Command): Command {
  const egress = program.command('egress').description('the outbound side as it runs: pairs, blocks, throttle events');
  egress.command('status', { isDefault: true }).description('pairs (site, source): window, limit, in flight; blocks in force (the running process)')
    .option('--json', 'print as JSON')
    .action((opts: { json?: boolean }, cmd: Command) => status(cmd, opts));
  egress.command('events').description('throttle reactions, holds and suspensions, newest first (read from the queue database)')
    .option('--open', 'only those still in force').option('--last <n>', 'how many', positiveInt, 50).option('--json', 'print as JSON')
    .action((opts: { last: number; open?: boolean; json?: boolean }, cmd: Command) => events(cmd, opts));
  egress.command('undo').description('lift what an event did (the running process; in a cluster, on every node)')
    .argument('<id>', 'the event id').option('--json', 'print the answer as JSON')
    .action((id: string, opts: { json?: boolean }, cmd: Command) => undo(id, cmd, opts));
  return egress;
}
