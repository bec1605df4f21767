/*
 * `ichidan scans show ID [--json]`: which engines scanned a message, what each said, and the verdict.
 * Read from the queue database (no process needed); an id without a scan record is exit 1.
 */
import type { Command } from 'commander';
import { readScan } from '../../queue/queue-records-sql.js';
import { commandConfig, iso, openDb, printJson, safe } from './cli-common.js';

async function show(id: string, cmd: Command, opts: { json?: boolean }): Promise<void> {
  const db = await openDb((await commandConfig(cmd)).dataDir);
  const row = readScan(db, id);
  db.close();
  if (!row) {
    process.stderr.write(`no scan record for ${id}\n`);
    process.exit(1);
  }
  const runs = JSON.parse(row.runs) as Array<Record<string, unknown>>;
  if (opts.json) return printJson({ ...row, runs });
  process.stdout.write(`${row.queue_id}\t${iso(row.at)}\t${row.action}\t${safe(row.reason)}\ttenants=${row.tenants}\t${row.ms} ms (overhead ${row.overhead_ms} ms)\n`);
  for (const r of runs) {
    const what = r.status === 'infected' ? r.signature : r.status === 'error' ? `${String(r.error)}: ${String(r.message)}`
      : r.status === 'violation' ? r.rule : r.status === 'unscannable' ? r.reason : r.score !== undefined ? `${String(r.score)}/${String(r.threshold)}${r.action ? ` ${String(r.action)}` : ''}` : r.skipped ?? '';
    process.stdout.write(`  ${String(r.engine)}\t${String(r.kind)}${r.shadow ? ' (shadow)' : ''}\t${String(r.status)}\t${safe(what)}\t${String(r.ms)} ms\t${String(r.version ?? '')}\n`);
  }
}

export function addScansCommands(program: Command): Command {
  const scans = program.command('scans').description('what the engines said about a message');
  scans.command('show').description('which engines scanned a message, what each said, and the verdict (read from the queue database)')
    .argument('<id>', 'queue id').option('--json', 'print as JSON')
    .action((id: string, opts: { json?: boolean }, cmd: Command) => show(id, cmd, opts));
  return scans;
}
