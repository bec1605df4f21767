/*
 * `ichidan scans show ID`: which engines scanned a message, what each said, and the verdict.
 * Read from the queue database (no process needed).
 */
import { readScan } from '../../queue/queue-records-sql.js';
import { iso, openDb, options, safe, usage } from './cli-common.js';

export const SCANS_USAGE = `  ichidan scans show ID [-c FILE]`;

export function scans(args: string[]): void {
  const { config, positionals } = options(args);
  const [action, id] = positionals;
  if (action !== 'show' || !id) usage(SCANS_USAGE);
  const db = openDb(config.dataDir);
  const row = readScan(db, id);
  db.close();
  if (!row) {
    process.stderr.write(`no scan record for ${id}\n`);
    process.exit(1);
  }
  process.stdout.write(`${row.queue_id}\t${iso(row.at)}\t${row.action}\t${safe(row.reason)}\ttenants=${row.tenants}\t${row.ms} ms (overhead ${row.overhead_ms} ms)\n`);
  for (const r of JSON.parse(row.runs) as Array<Record<string, unknown>>) {
    const what = r.status === 'infected' ? r.signature : r.status === 'error' ? `${String(r.error)}: ${String(r.message)}`
      : r.status === 'violation' ? r.rule : r.status === 'unscannable' ? r.reason : r.score !== undefined ? `${String(r.score)}/${String(r.threshold)}${r.action ? ` ${String(r.action)}` : ''}` : r.skipped ?? '';
    process.stdout.write(`  ${String(r.engine)}\t${String(r.kind)}${r.shadow ? ' (shadow)' : ''}\t${String(r.status)}\t${safe(what)}\t${String(r.ms)} ms\t${String(r.version ?? '')}\n`);
  }
}
