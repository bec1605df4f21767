/*
 * `ichidan engines`: the scanning engines, their switches and their record.
 *
 *   ichidan engines list [-c FILE]        each engine: operator state, breaker, last error, version, counters
 *   ichidan engines disable NAME --reason TEXT [-c FILE]   skip an engine from the next scan on (persisted)
 *   ichidan engines enable NAME [-c FILE]
 *   ichidan engines events [-c FILE] [--last N]     breaker transitions and switches, newest first
 *   ichidan engines stats [-c FILE] [--days N]      per engine and day: scanned, detected, alone, errors, latency
 * list, disable and enable go to the running process (admin/admin-engines.ts); events and stats
 * are read from the queue database.
 */
import { percentile } from '../../engines/engines-records.js';
import type { EngineInfo } from '../../engines/index.js';
import { readEngineEvents, readEngineStats } from '../../queue/queue-records-sql.js';
import { admin, iso, openDb, options, safe, usage } from './cli-common.js';

export const ENGINES_USAGE = `  ichidan engines stats [-c FILE] [--days N]
  ichidan engines list [-c FILE]
  ichidan engines disable NAME --reason TEXT [-c FILE]
  ichidan engines enable NAME [-c FILE]
  ichidan engines events [-c FILE] [--last N]`;

export async function engines(args: string[]): Promise<void> {
  const { config, values, positionals } = options(args, { days: { type: 'string' }, reason: { type: 'string' }, last: { type: 'string' } });
  const [action, name] = positionals;
  if (action === 'list') {
    const body = await admin(config, 'GET', '/v1/engines');
    process.stdout.write(`generation ${String(body.generation)}\n`);
    process.stdout.write('name\ttype\tkind\tstate\tbreaker\tscans\tfailures\tskipped\tversion\tlast error / reason\n');
    for (const e of body.engines as EngineInfo[]) {
      const note = e.state === 'disabled' ? `disabled: ${e.disabledReason}` : (e.lastError ?? '');
      process.stdout.write(`${e.name}${e.shadow ? ' (shadow)' : ''}\t${e.type}\t${e.kind}\t${e.state}\t${e.breaker}\t${e.scans}\t${e.failures}\t${e.skipped}\t${safe(e.version ?? '-')}\t${safe(note)}\n`);
    }
    return;
  }
  if ((action === 'disable' || action === 'enable') && name) {
    if (action === 'disable' && !values.reason) {
      process.stderr.write('give a reason: ichidan engines disable NAME --reason TEXT\n');
      process.exit(2);
    }
    const body = await admin(config, 'POST', `/v1/engines/${encodeURIComponent(name)}/${action}`, action === 'disable' ? { reason: values.reason } : undefined);
    process.stdout.write(`${String(body.engine)}: ${String(body.state)}\n`);
    return;
  }
  if (action === 'events') {
    const db = openDb(config.dataDir);
    for (const e of readEngineEvents(db, Number(values.last ?? 50))) {
      process.stdout.write(`${iso(e.at)}\t${e.engine}\t${e.event}${e.to_state ? ` ${e.from_state} → ${e.to_state}` : ''}\t${safe(e.reason)}\n`);
    }
    db.close();
    return;
  }
  if (action !== 'stats') usage(ENGINES_USAGE);
  const days = Number(values.days ?? 7);
  const since = new Date(Date.now() - (days - 1) * 86_400_000).toISOString().slice(0, 10);
  const db = openDb(config.dataDir);
  const rows = readEngineStats(db, since);
  db.close();
  const fmt = (n: number | null) => (n === null ? '-' : `${n}`);
  process.stdout.write('day\tengine\tscanned\tdetected\talone\terrors\ttimeouts\tskipped\tp50_ms\tp99_ms\n');
  for (const r of rows) {
    process.stdout.write(`${r.day}\t${r.engine}\t${r.scanned}\t${r.detected}\t${r.detectedAlone}\t${r.errors}\t${r.timeouts}\t${r.skipped}\t${fmt(percentile(r.histogram, 0.5))}\t${fmt(percentile(r.histogram, 0.99))}\n`);
  }
}
