#!/usr/bin/env node
/*
 * The `ichidan` command.
 *
 *   ichidan start [-c FILE]          run the MTA (default config: config/default.yaml)
 *   ichidan check-config FILE        validate a config file; exit 0 if good (warnings on stderr), 1 with the problems if not
 *   ichidan hash-password [PASS]     print a bcrypt hash for `users[].password` (reads stdin without PASS)
 *   ichidan queue [-c FILE]          recipients per tenant and state, and entries set aside as corrupt
 *   ichidan queue hold|release|purge, ichidan tenants suspend|resume, ichidan egress [status|events|undo]
 *                                    the outbound side (mta-cli-egress.ts)
 *   ichidan queue corrupt [list] | show|requeue|delete ID   entries set aside as corrupt (mta-cli-corrupt.ts)
 *   ichidan quarantine [list] [-c FILE]        messages the engines quarantined
 *   ichidan quarantine release ID [-c FILE]    deliver a quarantined message after all
 *   ichidan scans show ID [-c FILE]  which engines scanned a message, what each said, and the verdict
 *   ichidan engines stats [-c FILE] [--days N]  per engine and day: scanned, detected, alone, errors, latency
 *   ichidan engines list [-c FILE]   each engine: operator state, breaker, last error, version, counters
 *   ichidan engines disable NAME --reason TEXT [-c FILE]   skip an engine from the next scan on (persisted)
 *   ichidan engines enable NAME [-c FILE]
 *   ichidan engines events [-c FILE] [--last N]    breaker transitions and switches, newest first
 *   ichidan reload [-c FILE]         re-read the config file in the running process (also: SIGHUP)
 *   ichidan sessions list [-c FILE] [--last N] [--host H]   outbound sessions, newest first
 *   ichidan sessions show ID [-c FILE]   one session: the messages it carried and its transcript
 */
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import bcrypt from 'bcryptjs';
import Database from 'better-sqlite3';
import { percentile } from '../engines/engines-records.js';
import { oversizeWarnings, type EngineInfo } from '../engines/index.js';
import { createWriter, migrate, readEngineEvents, readEngineStats, readQuarantine, readScan, SCHEMA } from '../queue/queue-store-sql.js';
import { readConnection, readConnections } from '../queue/queue-store-transcripts.js';
import { adminRequest } from './mta-admin.js';
import { admin, iso, loadOrExit, openDb, options, safe } from './mta-cli-common.js';
import { EGRESS_USAGE, egress, queueCommand, tenants } from './mta-cli-egress.js';
import { adminSocket, Ichidan } from './index.js';
import { createLogger } from './mta-log.js';

const USAGE = `usage:
  ichidan start [-c FILE]
  ichidan check-config FILE
  ichidan hash-password [PASSWORD]
${EGRESS_USAGE}
  ichidan quarantine [list] [-c FILE]
  ichidan quarantine release ID [-c FILE]
  ichidan scans show ID [-c FILE]
  ichidan engines stats [-c FILE] [--days N]
  ichidan engines list [-c FILE]
  ichidan engines disable NAME --reason TEXT [-c FILE]
  ichidan engines enable NAME [-c FILE]
  ichidan engines events [-c FILE] [--last N]
  ichidan reload [-c FILE]
  ichidan sessions list [-c FILE] [--last N] [--host H]
  ichidan sessions show ID [-c FILE]`;

function configPath(args: string[]): string {
  const { values } = parseArgs({ args, options: { config: { type: 'string', short: 'c' } }, allowPositionals: false });
  return values.config ?? 'config/default.yaml';
}


async function start(args: string[]): Promise<void> {
  const file = configPath(args);
  const config = loadOrExit(file);
  const log = createLogger(config.log.level);
  const app = await Ichidan.start(config, log, { configFile: file });
  process.on('SIGHUP', () => { app.reload(); });
  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) return;
    stopping = true;
    log.info({ signal }, 'stopping: no new connections, finishing open transactions');
    app.stop().then(() => {
      log.info('stopped');
      log.flush?.();
      setTimeout(() => process.exit(0), 50).unref();
    }, (err) => {
      log.error({ err }, 'stop failed');
      process.exit(1);
    });
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
  // Machine-readable readiness line for supervisors and tests: where each listener is bound.
  if (process.env.ICHIDAN_READY_FD === '3') {
    const { createWriteStream } = await import('node:fs');
    createWriteStream('', { fd: 3 }).end(JSON.stringify({ ready: true, listeners: app.bound }) + '\n');
  }
}

function checkConfig(args: string[]): void {
  const file = args[0];
  if (!file) {
    process.stderr.write(USAGE + '\n');
    process.exit(2);
  }
  const config = loadOrExit(file);
  for (const warning of oversizeWarnings(config.engines, config.limits.maxMessageSize)) process.stderr.write(`${file}: warning: ${warning}\n`);
  const tenants = Object.keys(config.tenants).length;
  process.stdout.write(`${file}: ok (${config.listeners.length} listeners, ${tenants} tenants, ${Object.keys(config.routes).length} routes)\n`);
}

function hashPassword(args: string[]): void {
  const password = args[0] ?? readFileSync(0, 'utf8').replace(/\r?\n$/, '');
  if (!password) {
    process.stderr.write('empty password\n');
    process.exit(2);
  }
  process.stdout.write(bcrypt.hashSync(password, 10) + '\n');
}






async function quarantine(args: string[]): Promise<void> {
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
  if (action !== 'release' || !id) {
    process.stderr.write(USAGE + '\n');
    process.exit(2);
  }
  try {
    const { status, body } = await adminRequest(adminSocket(config), 'POST', `/v1/messages/${encodeURIComponent(id)}/release`);
    if (status !== 200) {
      process.stderr.write(`${String(body.error ?? `status ${status}`)}\n`);
      process.exit(1);
    }
    process.stdout.write(`${id}: ${String(body.released)} recipients released\n`);
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

function scans(args: string[]): void {
  const { config, positionals } = options(args);
  const [action, id] = positionals;
  if (action !== 'show' || !id) {
    process.stderr.write(USAGE + '\n');
    process.exit(2);
  }
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


async function engines(args: string[]): Promise<void> {
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
  if (action !== 'stats') {
    process.stderr.write(USAGE + '\n');
    process.exit(2);
  }
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

async function reload(args: string[]): Promise<void> {
  const { config } = options(args);
  const body = await admin(config, 'POST', '/v1/reload');
  const restart = body.needsRestart as string[];
  process.stdout.write(`reloaded: generation ${String(body.generation)}${restart.length ? `; needs a restart to apply: ${restart.join(', ')}` : ''}\n`);
}

const isoMs = (ms: number) => new Date(ms).toISOString();

function sessions(args: string[]): void {
  const { config, values, positionals } = options(args, { last: { type: 'string' }, host: { type: 'string' } });
  const [action = 'list', id] = positionals;
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
  if (action !== 'show' || !id) {
    process.stderr.write(USAGE + '\n');
    process.exit(2);
  }
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

const [command, ...rest] = process.argv.slice(2);
switch (command) {
  case 'start': await start(rest); break;
  case 'check-config': checkConfig(rest); break;
  case 'hash-password': hashPassword(rest); break;
  case 'queue': await queueCommand(rest); break;
  case 'tenants': await tenants(rest); break;
  case 'egress': await egress(rest); break;
  case 'quarantine': await quarantine(rest); break;
  case 'scans': scans(rest); break;
  case 'engines': await engines(rest); break;
  case 'reload': await reload(rest); break;
  case 'sessions': sessions(rest); break;
  default:
    process.stderr.write(USAGE + '\n');
    process.exit(command ? 2 : 0);
}
