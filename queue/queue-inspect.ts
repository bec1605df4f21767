/*
 * The queue message by message as an operator sees it — the one JSON shape `ichidan queue
 * list|show|why` (with --json) and the admin API's GET /v1/queue/messages[/ID] give:
 *
 *   list:  {id, receivedAt, ageSeconds, tenant, sender, size, state, nextAttempt, lastReply,
 *           recipients: [{address, tenant, state, attempts, nextAttempt, lastReply, lastHost, bounceClass}]}
 *   show:  the same, and {envelope, headers: [{name, value}], attempts: [{at, recipient, code, status,
 *           host, reply, session}], scan, sessions: [{id, startedAt, endedAt, host, address, port, tls, ended}], why}
 * Times are ISO 8601 (UTC); nextAttempt is null unless a recipient is queued.
 * A message's state: corrupt, quarantined, held (a recipient held), deferred (a queued recipient
 *   was tried before), queued (waiting for its first attempt), or done (every recipient final,
 *   leaving at the next sweep).
 *
 * Takes: a queue database connection (read only here), the spool folder (the stored header
 *   section of the message, up to 64 KB), queue.maxAge, a lookup of a domain's site (for the
 *   egress events that apply; the caller's, as delivery would name it), now.
 * Reads: queue-inspect-sql.ts, the egress events in force (queue-records-egress.ts), the paragraph
 *   from queue-why.ts.
 */
import { closeSync, openSync, readSync } from 'node:fs';
import { join } from 'node:path';
import type Database from 'better-sqlite3';
import { listMessages, readMessage, type MessageFilter, type StoredMessage } from './queue-inspect-sql.js';
import { readEgressEvents } from './queue-records-egress.js';
import type { MessageRow, RecipientRow, RecipientState } from './queue-store-sql.js';
import { whyMessage } from './queue-why.js';

export { MESSAGE_STATES, type MessageFilter, type MessageStateFilter } from './queue-inspect-sql.js';

export type MessageState = 'corrupt' | 'quarantined' | 'held' | 'deferred' | 'queued' | 'done';

export interface RecipientView {
  address: string;
  tenant: string;
  state: RecipientState;
  attempts: number;
  nextAttempt: string | null;
  lastReply: string | null;
  lastHost: string | null;
  bounceClass: string | null;
}

export interface MessageSummary {
  id: string;
  receivedAt: string;
  ageSeconds: number;
  /** The recipients' tenants, comma-separated (a message may have recipients of several). */
  tenant: string;
  sender: string;
  size: number;
  state: MessageState;
  nextAttempt: string | null;
  lastReply: string | null;
  recipients: RecipientView[];
}

export interface AttemptView { at: string; recipient: string; code: number | null; status: string | null; host: string | null; reply: string | null; session: string | null }
export interface SessionView { id: string; startedAt: string; endedAt: string | null; host: string; address: string; port: number; tls: string | null; ended: string | null }
export interface ScanView { at: string; action: string; reason: string; tenants: string[]; ms: number; overheadMs: number; runs: unknown[] }

export interface MessageDetail extends MessageSummary {
  envelope: {
    sender: string;
    recipients: Array<{ address: string; tenant: string; orcpt: string | null; notify: string | null }>;
    size: number; receivedAt: string; client: string; helo: string; authUser: string | null; listener: string;
    ret: string | null; envid: string | null; smtputf8: boolean; body8bit: boolean; kind: 'mail' | 'dsn';
    quarantine: string | null; note: string | null;
  };
  headers: Array<{ name: string; value: string }>;
  attempts: AttemptView[];
  scan: ScanView | null;
  sessions: SessionView[];
  why: string;
}

export interface InspectContext {
  now: number;
  /** queue.maxAge, ms. */
  maxAge: number;
  spoolDir: string;
  /** The site a domain belongs to (as delivery names it); null when it cannot be told. */
  siteOf: (domain: string) => Promise<string | null>;
}

const iso = (ms: number) => new Date(ms).toISOString();
const HEADER_READ = 64 * 1024;

export function messageState(msg: MessageRow, recipients: RecipientRow[]): MessageState {
  if (msg.state === 'corrupt') return 'corrupt';
  if (msg.quarantine !== null && recipients.some((r) => r.state === 'held')) return 'quarantined';
  if (recipients.some((r) => r.state === 'held')) return 'held';
  const queued = recipients.filter((r) => r.state === 'queued');
  if (queued.some((r) => r.attempts > 0)) return 'deferred';
  return queued.length > 0 ? 'queued' : 'done';
}

export function summarize(msg: MessageRow, recipients: RecipientRow[], now: number): MessageSummary {
  const queued = recipients.filter((r) => r.state === 'queued');
  const latest = recipients.filter((r) => r.last_reply !== null).sort((a, b) => b.updated_at - a.updated_at)[0];
  return {
    id: msg.id,
    receivedAt: iso(msg.received_at),
    ageSeconds: Math.max(0, Math.floor((now - msg.received_at) / 1000)),
    tenant: [...new Set(recipients.map((r) => r.tenant))].join(','),
    sender: msg.sender,
    size: msg.size,
    state: messageState(msg, recipients),
    nextAttempt: queued.length > 0 ? iso(Math.min(...queued.map((r) => r.next_attempt))) : null,
    lastReply: latest?.last_reply ?? null,
    recipients: recipients.map((r) => ({
      address: r.address, tenant: r.tenant, state: r.state, attempts: r.attempts,
      nextAttempt: r.state === 'queued' ? iso(r.next_attempt) : null,
      lastReply: r.last_reply, lastHost: r.last_host, bounceClass: r.bounce_class,
    })),
  };
}

/** The messages in the queue that match the filter, oldest first. */
export function queueMessages(db: Database.Database, filter: MessageFilter, now: number): MessageSummary[] {
  return listMessages(db, filter, now).map(({ message, recipients }) => summarize(message, recipients, now));
}

/** Everything about one message in the queue; undefined when there is none of that id. */
export async function queueMessage(db: Database.Database, id: string, ctx: InspectContext): Promise<MessageDetail | undefined> {
  const stored = readMessage(db, id);
  if (!stored) return undefined;
  const { message: m, recipients } = stored;
  return {
    ...summarize(m, recipients, ctx.now),
    envelope: {
      sender: m.sender,
      recipients: recipients.map((r) => ({ address: r.address, tenant: r.tenant, orcpt: r.orcpt, notify: r.notify })),
      size: m.size, receivedAt: iso(m.received_at), client: m.client, helo: m.helo, authUser: m.auth_user, listener: m.listener,
      ret: m.ret, envid: m.envid, smtputf8: m.smtputf8 === 1, body8bit: m.body8bit === 1, kind: m.kind, quarantine: m.quarantine, note: m.note,
    },
    headers: [...parseHeaders(m.trace), ...parseHeaders(readHeaderSection(ctx.spoolDir, m))],
    attempts: attemptViews(stored),
    scan: stored.scan && { at: iso(stored.scan.at), action: stored.scan.action, reason: stored.scan.reason, tenants: stored.scan.tenants.split(',').filter(Boolean), ms: stored.scan.ms, overheadMs: stored.scan.overhead_ms, runs: JSON.parse(stored.scan.runs) as unknown[] },
    sessions: stored.sessions.map((c) => ({ id: c.id, startedAt: iso(c.started_at), endedAt: c.ended_at === null ? null : iso(c.ended_at), host: c.host, address: c.address, port: c.port, tls: c.tls, ended: c.ended })),
    why: await whyOf(db, stored, ctx),
  };
}

/** The paragraph alone (`ichidan queue why`); undefined when there is no such message. */
export async function queueWhy(db: Database.Database, id: string, ctx: InspectContext): Promise<string | undefined> {
  const stored = readMessage(db, id);
  return stored && whyOf(db, stored, ctx);
}

async function whyOf(db: Database.Database, stored: StoredMessage, ctx: InspectContext): Promise<string> {
  const open = stored.recipients.filter((r) => r.state === 'queued');
  const domains = [...new Set(open.map((r) => r.domain))];
  const sites = new Map(await Promise.all(domains.map(async (d) => [d, await ctx.siteOf(d).catch(() => null)] as const)));
  const blocks = open.length > 0 ? readEgressEvents(db, { limit: 1000, open: true, now: ctx.now }) : [];
  return whyMessage(stored.message, stored.recipients, { now: ctx.now, maxAge: ctx.maxAge, blocks, siteOf: (d) => sites.get(d) ?? null });
}

function attemptViews(stored: StoredMessage): AttemptView[] {
  const address = new Map(stored.recipients.map((r) => [r.id, r.address]));
  return stored.attempts.map((a) => ({ at: iso(a.at), recipient: address.get(a.recipient) ?? String(a.recipient), code: a.code, status: a.status, host: a.host, reply: a.reply, session: a.session }));
}

/** The header section of the stored message (spool file, or the corrupt folder's), at most 64 KB; '' when unreadable. */
function readHeaderSection(spoolDir: string, msg: MessageRow): string {
  for (const path of [join(spoolDir, msg.id), join(spoolDir, 'corrupt', msg.id)]) {
    let fd: number;
    try {
      fd = openSync(path, 'r');
    } catch {
      continue;
    }
    try {
      const buf = Buffer.alloc(HEADER_READ);
      const n = readSync(fd, buf, 0, HEADER_READ, 0);
      const text = buf.subarray(0, n).toString('utf8');
      const end = text.search(/\r?\n\r?\n/);
      return end >= 0 ? text.slice(0, end + 2) : text;
    } finally {
      closeSync(fd);
    }
  }
  return '';
}

/** Header fields, unfolded, in order. */
export function parseHeaders(section: string): Array<{ name: string; value: string }> {
  const out: Array<{ name: string; value: string }> = [];
  for (const line of section.split(/\r?\n/)) {
    if (line === '') continue;
    if (/^[ \t]/.test(line) && out.length > 0) {
      out[out.length - 1].value += ' ' + line.trim();
      continue;
    }
    const colon = line.indexOf(':');
    if (colon > 0) out.push({ name: line.slice(0, colon).trim(), value: line.slice(colon + 1).trim() });
  }
  return out;
}
