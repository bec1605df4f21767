/*
 * The queue message by message, from the command line:
 *
 *   ichidan queue list [--tenant T] [--site S] [--state ST] [--sender TEXT] [--recipient TEXT]
 *                      [--older-than D] [--newer-than D] [--limit N] [--json]
 *   ichidan queue show ID [--json]      envelope, stored headers, every attempt, sessions, scan record, why
 *   ichidan queue why ID [--json]       one paragraph: why the message is where it is
 *   ichidan queue flush (ID | --tenant T | --site S) [--json]            retry now
 *   ichidan queue bounce (ID | --tenant T | --site S) [--reason R] [--json]   fail now, a notice to the sender
 *   ichidan queue delete (ID | --tenant T | --site S) [--reason R] [--json]   removed, no notice (postsuper -d)
 *   ichidan sessions list --message ID [--json]   the outbound sessions of one message
 * Each is an exported function taking the loaded config and a typed options object, so the
 * command-line framework only parses and calls. list, show, why and sessions read the queue
 * database directly (read-only: they work with the daemon stopped); flush, bounce and delete go
 * to the running process (admin/admin-queue-inspect.ts). Sites are looked up as delivery names
 * them (a named site's domains, a route, else the domain's MX hosts: DNS as `dns.servers` says).
 * Errors are one line on stderr starting "ichidan: "; an unknown id or no running process exits 1,
 * a bad option value 2.
 */
import { join } from 'node:path';
import { duration } from '../../base/base-config.js';
import type { Egress } from '../../delivery/index.js';
import { MESSAGE_STATES, queueMessage, queueMessages, queueWhy as whyParagraph, type InspectContext, type MessageStateFilter } from '../../queue/queue-inspect.js';
import { messageSessions } from '../../queue/queue-inspect-sql.js';
import { openDomains } from '../../queue/queue-store-sql.js';
import { relative } from '../../queue/queue-why.js';
import { adminRequest } from '../admin/admin-client.js';
import type { Config } from '../mta-config-schema.js';
import { adminSocket } from '../mta-config.js';
import { openDb, safe } from './cli-common.js';

export interface QueueListOptions {
  tenant?: string;
  /** A site key as `ichidan egress` shows it ("mx:mx1.example.net", "site:NAME", ...). */
  site?: string;
  state?: string;
  /** Part of the envelope sender. */
  sender?: string;
  /** Part of a recipient's address. */
  recipient?: string;
  /** Durations: "30m", "2d". */
  olderThan?: string;
  newerThan?: string;
  limit?: number | string;
  json?: boolean;
}

export interface JsonOption { json?: boolean }

/** What an action applies to: one message (`id`), or a tenant and/or a site. */
export interface QueueActionOptions {
  id?: string;
  tenant?: string;
  site?: string;
  /** Said in the log, and (bounce) in the notice's diagnostic. */
  reason?: string;
  json?: boolean;
}

export type QueueFlushOptions = Omit<QueueActionOptions, 'reason'>;

function fail(message: string, code: 1 | 2 = 1): never {
  process.stderr.write(`ichidan: ${safe(message)}\n`);
  process.exit(code);
}

const out = (text: string): void => { process.stdout.write(text.endsWith('\n') ? text : text + '\n'); };
const json = (value: unknown): void => out(JSON.stringify(value, null, 2));

function durationOption(name: string, value: string | undefined): number | undefined {
  if (value === undefined) return undefined;
  const parsed = duration.safeParse(/^\d+$/.test(value) ? Number(value) : value);
  if (!parsed.success) fail(`--${name} takes a duration such as "30m" or "2d", not "${value}"`, 2);
  return parsed.data;
}

/** The site of a domain, as delivery would name it; null when its lookup fails. */
function siteLookup(config: Config): (domain: string) => Promise<string | null> {
  let egress: Egress | null = null;
  return async (domain) => {
    // Loaded only when a site is asked about: the other commands start without delivery's modules.
    egress ??= new (await import('../../delivery/index.js')).Egress(config);
    try {
      return (await egress.site(domain)).key;
    } catch {
      return null;
    }
  };
}

function inspectContext(config: Config): InspectContext {
  return { now: Date.now(), maxAge: config.queue.maxAge, spoolDir: join(config.dataDir, 'spool'), siteOf: siteLookup(config) };
}

export async function queueList(config: Config, opts: QueueListOptions): Promise<void> {
  if (opts.state !== undefined && !(MESSAGE_STATES as readonly string[]).includes(opts.state)) fail(`--state is one of ${MESSAGE_STATES.join(', ')}`, 2);
  const limit = opts.limit === undefined ? 100 : Number(opts.limit);
  if (!Number.isInteger(limit) || limit < 1) fail('--limit takes a positive whole number', 2);
  const olderThan = durationOption('older-than', opts.olderThan);
  const newerThan = durationOption('newer-than', opts.newerThan);
  const db = await openDb(config.dataDir);
  let domains: string[] | undefined;
  if (opts.site !== undefined) {
    const siteOf = siteLookup(config);
    const open = openDomains(db);
    const sites = await Promise.all(open.map((d) => siteOf(d)));
    domains = open.filter((_, i) => sites[i] === opts.site);
  }
  const now = Date.now();
  const messages = queueMessages(db, { tenant: opts.tenant, state: opts.state as MessageStateFilter | undefined, sender: opts.sender, recipient: opts.recipient, olderThan, newerThan, domains, limit }, now);
  db.close();
  if (opts.json) return json({ messages });
  out('id\tage\ttenant\tsender\trecipients\tsize\tstate\tnext_attempt\tlast_reply');
  for (const m of messages) {
    const age = relative(now - m.ageSeconds * 1000, now).replace(/ ago$/, '');
    const next = m.nextAttempt === null ? '-' : m.nextAttempt.replace(/\.\d+Z$/, 'Z');
    out([m.id, age, m.tenant, `<${m.sender}>`, m.recipients.map((r) => `${r.address}(${r.state})`).join(','), m.size, m.state, next, m.lastReply ?? '-'].map(safe).join('\t'));
  }
}

export async function queueShow(config: Config, id: string, opts: JsonOption = {}): Promise<void> {
  const db = await openDb(config.dataDir);
  const m = await queueMessage(db, id, inspectContext(config));
  db.close();
  if (!m) fail(`no message ${id} in the queue`);
  if (opts.json) return json(m);
  const e = m.envelope;
  const lines = [
    `message ${m.id}: ${m.state}, ${m.size} bytes, received ${e.receivedAt} (${m.ageSeconds} s ago)`,
    `from <${e.sender}> via ${e.listener} from ${e.client} (helo ${e.helo})${e.authUser ? `, authenticated as ${e.authUser}` : ''}`,
    `dsn: ret ${e.ret ?? '-'}, envid ${e.envid ?? '-'}; smtputf8 ${e.smtputf8}; 8bit ${e.body8bit}; kind ${e.kind}${e.quarantine ? `; quarantined: ${e.quarantine}` : ''}${e.note ? `; note: ${e.note}` : ''}`,
    'recipients:',
    ...m.recipients.map((r) => `  ${r.address}\t${r.tenant}\t${r.state}\tattempts ${r.attempts}\tnext ${r.nextAttempt ?? '-'}\t${r.lastHost ?? '-'}\t${r.lastReply ?? '-'}${r.bounceClass ? `\tclass ${r.bounceClass}` : ''}`),
    'headers:',
    ...m.headers.map((h) => `  ${h.name}: ${h.value}`),
    `attempts (${m.attempts.length}):`,
    ...m.attempts.map((a) => `  ${a.at}\t${a.recipient}\t${a.host ?? '-'}\tsession ${a.session ?? '-'}\t${a.reply ?? '-'}`),
    `sessions (${m.sessions.length}; ichidan sessions show ID):`,
    ...m.sessions.map((s) => `  ${s.id}\t${s.startedAt}\t${s.host} [${s.address}]:${s.port}\ttls ${s.tls ?? 'none'}\t${s.ended ?? 'open'}`),
    m.scan ? `scan: ${m.scan.at} ${m.scan.action} (${m.scan.reason}), ${m.scan.ms} ms; ichidan scans show ${m.id}` : 'scan: no record',
    `why: ${m.why}`,
  ];
  out(lines.map(safe).join('\n'));
}

export async function queueWhy(config: Config, id: string, opts: JsonOption = {}): Promise<void> {
  const db = await openDb(config.dataDir);
  const why = await whyParagraph(db, id, inspectContext(config));
  db.close();
  if (why === undefined) fail(`no message ${id} in the queue`);
  if (opts.json) return json({ id, why });
  out(safe(why));
}

/** The outbound sessions of one message (those that carried it, and those opened for it that failed). */
export async function sessionsForMessage(config: Config, id: string, opts: JsonOption = {}): Promise<void> {
  const db = await openDb(config.dataDir);
  const known = db.prepare(`SELECT 1 FROM messages WHERE id = ?`).get(id) !== undefined;
  const sessions = messageSessions(db, id);
  db.close();
  if (!known && sessions.length === 0) fail(`no message ${id} in the queue, and no session carried it`);
  if (opts.json) return json({ message: id, sessions });
  out('id\tstarted\tduration_ms\thost\taddress\ttls\tmessages\tended');
  for (const c of sessions) {
    const ms = c.ended_at === null ? '-' : `${c.ended_at - c.started_at}`;
    out([c.id, new Date(c.started_at).toISOString(), ms, c.host, `${c.address}:${c.port}`, c.tls ?? 'none', c.messages, c.ended ?? 'open'].map(safe).join('\t'));
  }
}

function scopeOf(opts: QueueActionOptions): { message?: string; tenant?: string; site?: string } {
  if (opts.id !== undefined && (opts.tenant !== undefined || opts.site !== undefined)) fail('give a message id, or --tenant and/or --site, not both', 2);
  if (opts.id === undefined && opts.tenant === undefined && opts.site === undefined) fail('give a message id, --tenant or --site', 2);
  return opts.id !== undefined ? { message: opts.id } : { tenant: opts.tenant, site: opts.site };
}

/** An action on the running process; every refusal is one line and exit 1. */
async function act(config: Config, path: string, body: Record<string, unknown>): Promise<Record<string, unknown>> {
  let res: { status: number; body: Record<string, unknown> };
  try {
    res = await adminRequest(adminSocket(config), 'POST', path, body);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ECONNREFUSED') fail(`Ichidan is not running (no admin socket at ${adminSocket(config)})`);
    fail(`the admin API failed: ${(err as Error).message}`);
  }
  if (res.status >= 400) fail(String(res.body.error ?? `status ${res.status}`));
  return res.body;
}

const describe = (opts: QueueActionOptions) => opts.id !== undefined ? `message ${opts.id}` : [opts.tenant && `tenant ${opts.tenant}`, opts.site && `site ${opts.site}`].filter(Boolean).join(' at ');

export async function queueFlush(config: Config, opts: QueueFlushOptions): Promise<void> {
  const body = await act(config, '/v1/queue/flush', scopeOf(opts));
  if (opts.json) return json(body);
  out(`${describe(opts)}: ${String(body.flushed)} recipients flushed (tried now)`);
}

export async function queueBounce(config: Config, opts: QueueActionOptions): Promise<void> {
  const body = await act(config, '/v1/queue/bounce', { ...scopeOf(opts), reason: opts.reason });
  if (opts.json) return json(body);
  const busy = Number(body.busy) > 0 ? `; ${String(body.busy)} left alone: a delivery attempt was under way (try again)` : '';
  out(`${describe(opts)}: ${String(body.bounced)} recipients bounced, the sender notified as NOTIFY allows${busy}`);
}

export async function queueDelete(config: Config, opts: QueueActionOptions): Promise<void> {
  const body = await act(config, '/v1/queue/delete', { ...scopeOf(opts), reason: opts.reason });
  if (opts.json) return json(body);
  const inFlight = Number(body.inFlight) > 0 ? `; ${String(body.inFlight)} had a delivery attempt under way: that copy may still arrive, nothing is sent afterwards` : '';
  out(`${describe(opts)}: ${String(body.deleted)} recipients deleted, no notice sent${inFlight}`);
}
