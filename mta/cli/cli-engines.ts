/*
 * `ichidan engines`: the scanning engines, their switches and their record.
 *
 *   ichidan engines list [--json]         each engine: operator state, breaker, last error, version, counters
 *   ichidan engines disable NAME --reason TEXT   skip an engine from the next scan on (persisted)
 *   ichidan engines enable NAME
 *   ichidan engines events [--last N] [--json]   breaker transitions and switches, newest first
 *   ichidan engines stats [--days N] [--json]    per engine and day: scanned, detected, alone, errors, latency
 * list, disable and enable go to the running process (admin/admin-engines.ts); events and stats
 * are read from the queue database.
 */
import type { Command } from 'commander';
import { percentile } from '../../engines/engines-records.js';
import type { EngineInfo } from '../../engines/index.js';
import { readEngineEvents, readEngineStats } from '../../queue/queue-records-sql.js';
import { admin, commandConfig, iso, openDb, positiveInt, printJson, safe } from './cli-common.js';

async function list(cmd: Command, opts: { json?: boolean }): Promise<void> {
  const body = await admin(await commandConfig(cmd), 'GET', '/v1/engines');
  if (opts.json) return printJson(body);
  process.stdout.write(`generation ${String(body.generation)}\n`);
  process.stdout.write('name\ttype\tkind\tstate\tbreaker\tscans\tfailures\tskipped\tversion\tlast error / reason\n');
  for (const e of body.engines as EngineInfo[]) {
    const note = e.state === 'disabled' ? `disabled: ${e.disabledReason}` : (e.lastError ?? '');
    process.stdout.write(`${e.name}${e.shadow ? ' (shadow)' : ''}\t${e.type}\t${e.kind}\t${e.state}\t${e.breaker}\t${e.scans}\t${e.failures}\t${e.skipped}\t${safe(e.version ?? '-')}\t${safe(note)}\n`);
  }
}

async function change(action: 'disable' | 'enable', name: string, cmd: Command, opts: { reason?: string; json?: boolean }): Promise<void> {
  const body = await admin(await commandConfig(cmd), 'POST', `/v1/engines/${encodeURIComponent(name)}/${action}`, action === 'disable' ? { reason: opts.reason } : undefined);
  if (opts.json) return printJson(body);
  process.stdout.write(`${String(body.engine)}: ${String(body.state)}\n`);
}

async function events(cmd: Command, opts: { last: number; json?: boolean }): Promise<void> {
  const db = await openDb((await commandConfig(cmd)).dataDir);
  const rows = readEngineEvents(db, opts.last);
  db.close();
  if (opts.json) return printJson(rows);
  for (const e of rows) {
    process.stdout.write(`${iso(e.at)}\t${e.engine}\t${e.event}${e.to_state ? ` ${e.from_state} → ${e.to_state}` : ''}\t${safe(e.reason)}\n`);
  }
}

async function stats(cmd: Command, opts: { days: number; json?: boolean }): Promise<void> {
  const since = new Date(Date.now() - (opts.days - 1) * 86_400_000).toISOString().slice(0, 10);
  const db = await openDb((await commandConfig(cmd)).dataDir);
  const rows = readEngineStats(db, since);
  db.close();
  const p = (r: (typeof rows)[number], q: number) => percentile(r.histogram, q);
  if (opts.json) return printJson(rows.map(({ histogram, ...r }) => ({ ...r, p50Ms: percentile(histogram, 0.5), p99Ms: percentile(histogram, 0.99) })));
  const fmt = (n: number | null) => (n === null ? '-' : `${n}`);
  process.stdout.write('day\tengine\tscanned\tdetected\talone\terrors\ttimeouts\tskipped\tp50_ms\tp99_ms\n');
  for (const r of rows) {
    process.stdout.write(`${r.day}\t${r.engine}\t${r.scanned}\t${r.detected}\t${r.detectedAlone}\t${r.errors}\t${r.timeouts}\t${r.skipped}\t${fmt(p(r, 0.5))}\t${fmt(p(r, 0.99))}\n`);
  }
}

export function addEnginesCommands(program: Command): Command {
  const engines = program.command('engines').description('the scanning engines, their switches and their record');
  engines.command('list').description('each engine: operator state, breaker, last error, version, counters (the running process)')
    .option('--json', 'print as JSON')
    .action((opts: { json?: boolean }, cmd: Command) => list(cmd, opts));
  engines.command('disable').description('skip an engine from the next scan on, kept across restarts (the running process)')
    .argument('<name>', 'the engine').requiredOption('--reason <text>', 'why, shown by engines list').option('--json', 'print the answer as JSON')
    .action((name: string, opts: { reason?: string; json?: boolean }, cmd: Command) => change('disable', name, cmd, opts));
  engines.command('enable').description('scan with an engine again (the running process)')
    .argument('<name>', 'the engine').option('--json', 'print the answer as JSON')
    .action((name: string, opts: { json?: boolean }, cmd: Command) => change('enable', name, cmd, opts));
  engines.command('events').description('breaker transitions and switches, newest first (read from the queue database)')
    .option('--last <n>', 'how many', positiveInt, 50).option('--json', 'print as JSON')
    .action((opts: { last: number; json?: boolean }, cmd: Command) => events(cmd, opts));
  engines.command('stats').description('per engine and day: scanned, detected, detected alone, errors, latency (read from the queue database)')
    .option('--days <n>', 'how many days back', positiveInt, 7).option('--json', 'print as JSON')
    .action((opts: { days: number; json?: boolean }, cmd: Command) => stats(cmd, opts));
  return engines;
}
