/*
 * `ichidan sessions`: outbound SMTP sessions and their transcripts (delivery.transcripts).
 *
 *   ichidan sessions [list] [--last N] [--host H] [--json]   newest first
 *   ichidan sessions list --message ID [--json]   one message's sessions (cli-queue-inspect.ts)
 *   ichidan sessions show ID [--json]     one session: the messages it carried and its transcript
 * Read from the queue database (no process needed); an unknown id is exit 1.
 */
import type Database from 'better-sqlite3';
import type { Command } from 'commander';
import { readConnection, readConnections, type UnreadableLines } from '../../queue/queue-records-transcripts.js';
import { commandConfig, iso, openDb, positiveInt, printJson, safe } from './cli-common.js';

const isoMs = (ms: number) => new Date(ms).toISOString();

async function list(cmd: Command, opts: { last: number; host?: string; message?: string; json?: boolean }): Promise<void> {
  if (opts.message !== undefined) {
    const { sessionsForMessage } = await import('./cli-queue-inspect.js');
    return sessionsForMessage(await commandConfig(cmd), opts.message, { json: opts.json });
  }
  const db = await openDb((await commandConfig(cmd)).dataDir);
  const rows = hasTranscripts(db) ? readConnections(db, { last: opts.last, host: opts.host }) : [];
  db.close();
  if (opts.json) return printJson(rows);
  process.stdout.write('id\tstarted\tduration_ms\thost\taddress\ttls\tmessages\tcommands\tstored\tended\n');
  for (const c of rows) {
    const ms = c.ended_at === null ? '-' : `${c.ended_at - c.started_at}`;
    const stored = `${c.bytes_stored} B${c.truncated ? ' (truncated)' : ''}`;
    process.stdout.write(`${c.id}\t${iso(c.started_at)}\t${ms}\t${safe(c.host)}\t${c.address}:${c.port}\t${c.tls ?? 'none'}\t${c.messages}\t${c.commands}\t${stored}\t${safe(c.ended ?? 'open')}\n`);
  }
}

async function show(id: string, cmd: Command, opts: { json?: boolean }): Promise<void> {
  const db = await openDb((await commandConfig(cmd)).dataDir);
  const session = hasTranscripts(db) ? readConnection(db, id) : undefined;
  db.close();
  if (!session) {
    process.stderr.write(`no session ${id}\n`);
    process.exit(1);
  }
  if (opts.json) return printJson(session);
  const { connection: c, messages, commands, unreadable = [] } = session;
  const out = [
    `session ${c.id} (${c.protocol}) to ${safe(c.host)} [${c.address}]:${c.port} from ${c.local_address ?? '?'}:${c.local_port ?? '?'} as ${safe(c.helo)}`,
    `started ${isoMs(c.started_at)}, ${c.ended_at === null ? 'still open' : `ended ${isoMs(c.ended_at)}: ${safe(c.ended ?? '')}`}`,
    `tls ${c.tls ?? 'none'}; tenant ${c.tenant ?? '-'}; ${c.messages} messages, ${c.commands} commands, ${c.lines} lines, ${c.bytes_stored} bytes stored${c.truncated ? ' (truncated: maxBytesPerSession reached)' : ''}`,
  ];
  for (const m of messages) out.push(`message ${m.n}\t${m.queue_id}\t${m.tenant}\t${safe(m.recipients)}`);
  const gaps = [...unreadable];
  const gap = (g: UnreadableLines) => `${isoMs(g.at)}\t?\t!! lines ${g.first_seq}-${g.last_seq} were stored but cannot be read (${safe(g.error)})`;
  for (const l of commands) {
    while (gaps.length > 0 && gaps[0].first_seq < l.seq) out.push(gap(gaps.shift()!));
    const who = l.dir === 'client' ? 'C:' : 'S:';
    for (const text of l.text.split('\n')) out.push(`${isoMs(l.at)}\t${l.queue_id ?? '-'}\t${who} ${safe(text)}`);
  }
  out.push(...gaps.map(gap));
  const unstored = c.lines - commands.length - unreadable.reduce((n, g) => n + g.last_seq - g.first_seq + 1, 0);
  if (unstored > 0) out.push(`... ${unstored} more lines counted but not stored`);
  process.stdout.write(out.join('\n') + '\n');
}

export function addSessionsCommands(program: Command): Command {
  const sessions = program.command('sessions').description('outbound SMTP sessions and their transcripts (read from the queue database)');
  sessions.command('list', { isDefault: true }).description('the sessions, newest first')
    .option('--last <n>', 'how many', positiveInt, 20).option('--host <host>', 'only to this host')
    .option('--message <id>', 'only those of one message, failed connections included').option('--json', 'print as JSON')
    .action((opts: { last: number; host?: string; message?: string; json?: boolean }, cmd: Command) => list(cmd, opts));
  sessions.command('show').description('one session: the messages it carried and its transcript')
    .argument('<id>', 'the session id').option('--json', 'print as JSON')
    .action((id: string, opts: { json?: boolean }, cmd: Command) => show(id, cmd, opts));
  return sessions;
}

/** A database last written by a version without transcripts has no such tables. */
function hasTranscripts(db: Database.Database): boolean {
  return db.prepare(`SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'connections'`).get() !== undefined;
}
