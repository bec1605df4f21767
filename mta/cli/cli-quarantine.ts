/*
 * `ichidan quarantine`: messages the engines quarantined, and letting one go.
 *
 *   ichidan quarantine [list] [-c FILE]        read from the queue database (no process needed)
 *   ichidan quarantine release ID [-c FILE]    deliver a quarantined message after all
 * A release goes to the running process (admin/admin-queue.ts), which in a cluster hands a message
 * it does not hold to the node that does; when none runs, the held
 * recipients are marked queued in the database with the same write the queue makes
 * (queue/queue-store-sql.ts), and go out when Ichidan starts.
 */
import { createWriter, migrate, readQuarantine, SCHEMA } from '../../queue/queue-store-sql.js';
import { adminRequest } from '../admin/admin-client.js';
import { adminSocket } from '../mta-config.js';
import { iso, openDb, options, safe, usage } from './cli-common.js';

export const QUARANTINE_USAGE = `  ichidan quarantine [list] [-c FILE]
  ichidan quarantine release ID [-c FILE]`;

export async function quarantine(args: string[]): Promise<void> {
  const { config, positionals } = options(args);
  const [action = 'list', id] = positionals;
  if (action === 'list') {
    const db = openDb(config.dataDir);
    const rows = readQuarantine(db);
    for (const r of rows) process.stdout.write(`${r.id}\t${iso(r.received_at)}\t<${safe(r.sender)}>\t${r.recipients} rcpt\t${r.size} B\t${safe(r.quarantine)}\n`);
    if (rows.length === 0) process.stdout.write('quarantine is empty\n');
    db.close();
    return;
  }
  if (action !== 'release' || !id) usage(QUARANTINE_USAGE);
  try {
    const { status, body } = await adminRequest(adminSocket(config), 'POST', `/v1/messages/${encodeURIComponent(id)}/release`);
    if (status === 202) {
      process.stdout.write(`${id}: ${String(body.error)}\n`);
      return;
    }
    if (status !== 200) {
      process.stderr.write(`${String(body.error ?? `status ${status}`)}\n`);
      process.exit(1);
    }
    process.stdout.write(`${id}: ${String(body.released)} recipients released${body.node ? ` (on node ${String(body.node)})` : ''}\n`);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code !== 'ENOENT' && code !== 'ECONNREFUSED') throw err;
    // Not running: mark the recipients queued; the next start delivers them.
    const db = openDb(config.dataDir, false);
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
}
