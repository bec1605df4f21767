/*
 * `ichidan quarantine`: messages the engines quarantined, and letting one go.
 *
 *   ichidan quarantine [list] [--json]         read from the queue database (no process needed)
 *   ichidan quarantine release ID              deliver a quarantined message after all
 * A release goes to the running process (admin/admin-queue.ts), which in a cluster hands a message
 * it does not hold to the node that does; when none runs, the held
 * recipients are marked queued in the database with the same write the queue makes
 * (queue/queue-store-sql.ts), and go out when Ichidan starts.
 */
import type { Command } from 'commander';
import { createWriter, migrate, readQuarantine, SCHEMA } from '../../queue/queue-store-sql.js';
import { adminOrNull, commandConfig, iso, openDb, printJson, safe } from './cli-common.js';

async function list(cmd: Command, opts: { json?: boolean }): Promise<void> {
  const db = await openDb((await commandConfig(cmd)).dataDir);
  const rows = readQuarantine(db);
  db.close();
  if (opts.json) return printJson(rows);
  for (const r of rows) process.stdout.write(`${r.id}\t${iso(r.received_at)}\t<${safe(r.sender)}>\t${r.recipients} rcpt\t${r.size} B\t${safe(r.quarantine)}\n`);
  if (rows.length === 0) process.stdout.write('quarantine is empty\n');
}

async function release(id: string, cmd: Command): Promise<void> {
  const config = await commandConfig(cmd);
  const answer = await adminOrNull(config, 'POST', `/v1/messages/${encodeURIComponent(id)}/release`);
  if (answer) {
    const { status, body } = answer;
    if (status === 202) {
      process.stdout.write(`${id}: ${String(body.error)}\n`);
      return;
    }
    if (status !== 200) {
      process.stderr.write(`${String(body.error ?? `status ${status}`)}\n`);
      process.exit(1);
    }
    process.stdout.write(`${id}: ${String(body.released)} recipients released${body.node ? ` (on node ${String(body.node)})` : ''}\n`);
    return;
  }
  // Not running: mark the recipients queued; the next start delivers them.
  const db = await openDb(config.dataDir, false);
  db.exec(SCHEMA);
  migrate(db);
  // The same write the running queue makes (queue-store-sql.ts).
  const apply = createWriter(db);
  const n = db.transaction(() => (apply({ op: 'releaseMessage', id, now: Date.now() }) as unknown[]).length)();
  db.close();
  if (n === 0) {
    process.stderr.write(`no held recipients in message ${id}\n`);
    process.exit(1);
  }
  process.stdout.write(`${id}: ${n} recipients released (Ichidan is not running; they go out when it starts)\n`);
}

export function addQuarantineCommands(program: Command): Command {
  const quarantine = program.command('quarantine').description('messages the engines quarantined, and letting one go');
  quarantine.command('list', { isDefault: true }).description('the quarantined messages (read from the queue database)')
    .option('--json', 'print as JSON')
    .action((opts: { json?: boolean }, cmd: Command) => list(cmd, opts));
  quarantine.command('release').description('deliver a quarantined message after all (the running process, else marked in the database for the next start)')
    .argument('<id>', 'queue id')
    .action((id: string, _opts: unknown, cmd: Command) => release(id, cmd));
  return quarantine;
}
