/*
 * `ichidan sessions`: outbound SMTP sessions and their transcripts (delivery.transcripts).
 *
 *   ichidan sessions list [-c FILE] [--last N] [--host H]   newest first
 *   ichidan sessions list --message ID [--json]   one message's sessions (cli-queue-inspect.ts)
 *   ichidan sessions show ID [-c FILE]    one session: the messages it carried and its transcript
 * Read from the queue database (no process needed).
 */
import type Database from 'better-sqlite3';
import { readConnection, readConnections } from '../../queue/queue-records-transcripts.js';
import { iso, openDb, options, safe, usage } from './cli-common.js';
import { sessionsForMessage } from './cli-queue-inspect.js';

export const SESSIONS_USAGE = `  ichidan sessions list [-c FILE] [--last N] [--host H]
  ichidan sessions list --message ID [-c FILE] [--json]
  ichidan sessions show ID [-c FILE]`;

const isoMs = (ms: number) => new Date(ms).toISOString();

export function sessions(args: string[]): void {
  const json = args.includes('--json');
  const { config, values, positionals } = options(args.filter((a) => a !== '--json'), { last: { type: 'string' }, host: { type: 'string' }, message: { type: 'string' } });
  const [action = 'list', id] = positionals;
  if (action === 'list' && values.message !== undefined) return sessionsForMessage(config, values.message, { json });
  if (action === 'list') {
    const last = Number(values.last ?? 20);
    if (!Number.isInteger(last) || last < 1) {
      process.stderr.write('--last takes a positive number\n');
      process.exit(2);
    }
    const db = openDb(config.dataDir);
    const rows = hasTranscripts(db) ? readConnections(db, { last, host: values.host }) : [];
    db.close();
    process.stdout.write('id\tstarted\tduration_ms\thost\taddress\ttls\tmessages\tcommands\tstored\tended\n');
    for (const c of rows) {
      const ms = c.ended_at === null ? '-' : `${c.ended_at - c.started_at}`;
      const stored = `${c.bytes_stored} B${c.truncated ? ' (truncated)' : ''}`;
      process.stdout.write(`${c.id}\t${iso(c.started_at)}\t${ms}\t${safe(c.host)}\t${c.address}:${c.port}\t${c.tls ?? 'none'}\t${c.messages}\t${c.commands}\t${stored}\t${safe(c.ended ?? 'open')}\n`);
    }
    return;
  }
  if (action !== 'show' || !id) usage(SESSIONS_USAGE);
  const db = openDb(config.dataDir);
  const session = hasTranscripts(db) ? readConnection(db, id) : undefined;
  db.close();
  if (!session) {
    process.stderr.write(`no session ${id}\n`);
    process.exit(1);
  }
  const { connection: c, messages, commands } = session;
  const out = [
    `session ${c.id} (${c.protocol}) to ${safe(c.host)} [${c.address}]:${c.port} from ${c.local_address ?? '?'}:${c.local_port ?? '?'} as ${safe(c.helo)}`,
    `started ${isoMs(c.started_at)}, ${c.ended_at === null ? 'still open' : `ended ${isoMs(c.ended_at)}: ${safe(c.ended ?? '')}`}`,
    `tls ${c.tls ?? 'none'}; tenant ${c.tenant ?? '-'}; ${c.messages} messages, ${c.commands} commands, ${c.lines} lines, ${c.bytes_stored} bytes stored${c.truncated ? ' (truncated: maxBytesPerSession reached)' : ''}`,
  ];
  for (const m of messages) out.push(`message ${m.n}\t${m.queue_id}\t${m.tenant}\t${safe(m.recipients)}`);
  for (const l of commands) {
    const who = l.dir === 'client' ? 'C:' : 'S:';
    for (const text of l.text.split('\n')) out.push(`${isoMs(l.at)}\t${l.queue_id ?? '-'}\t${who} ${safe(text)}`);
  }
  const unstored = c.lines - commands.length;
  if (unstored > 0) out.push(`... ${unstored} more lines counted but not stored`);
  process.stdout.write(out.join('\n') + '\n');
}

/** A database last written by a version without transcripts has no such tables. */
function hasTranscripts(db: Database.Database): boolean {
  return db.prepare(`SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'connections'`).get() !== undefined;
}
