/*
 * One SMTP (or LMTP) transaction toward a next hop, on a pooled SmtpConnection (smtp/).
 *
 * Takes a hop, an envelope and a function that opens the message stream (Ichidan's stored
 * headers followed by the unchanged spool file); tries the hop's addresses in order until one
 * answers, sends with the STARTTLS the hop's TLS level demands (delivery-tls.ts), and returns one
 * outcome per recipient:
 * 2xx delivered, 4xx deferred, 5xx bounced, each with the reply that decided it (a recipient
 * refused at RCPT keeps its own reply; LMTP gives each accepted recipient its own reply after
 * the final dot). A hop that cannot be reached (refused, timeout, greeting or EHLO refused) is
 * reported as `unreachable` so the caller can try the next MX; so is a hop whose TLS falls short
 * of what its level requires, with a 4.7.x reply naming the rule — the message is never sent
 * over such a session.
 * Sessions are pooled per TLS level and name (smtp/smtp-pool.ts), so a reused session always
 * meets the requirement it was opened for; one the peer dropped while idle, found dead before
 * it read any of the message, is not held against the destination: a fresh one is opened.
 * With transcripts on, each new session gets a Transcript (delivery-transcript.ts) fed by the
 * connection's wire log; each message it carries is tied to it by queue id. The same log feeds
 * the ReplyClock, whose signal (delivery-throttle.ts) every result carries.
 * RFCs: 5321, 2920 (PIPELINING), 2033 (LMTP), 3461 (DSN), 1870 (SIZE), 3207 (STARTTLS).
 */
import type { Readable } from 'node:stream';
import type { NextHop } from './delivery-route.js';
import { bannerCapSignal, errorSignal, ReplyClock, worse, type Signal } from './delivery-throttle.js';
import { checkHopTls, sniName, starttlsOptions, tlsRefusal, type HopTls, type TlsLevel } from './delivery-tls.js';
import { failureReason, Transcript, type TranscriptSink } from './delivery-transcript.js';
import { replyString, SmtpConnection, type ConnectionError, type HandshakeRefusal, type Reply, type StartTls } from './smtp/smtp-connection.js';
import { isPositive, sendEnvelope } from './smtp/smtp-envelope.js';
import type { Lease, PoolLimits, SmtpPool } from './smtp/smtp-pool.js';
import { deferReply, STATUS } from '../base/base-outcome.js';

export interface OutboundRecipient {
  id: number;
  address: string;
  notify: string | null;
  orcpt: string | null;
  /** Further RCPT parameters (a cluster transfer's). */
  parameters?: string[];
}

export interface OutboundMessage {
  /** For the transcript: the queue id and the tenant whose lane sends it. */
  queueId: string;
  tenant: string;
  sender: string;
  recipients: OutboundRecipient[];
  size: number;
  ret: string | null;
  envid: string | null;
  body8bit: boolean;
  /** Further MAIL parameters (a cluster transfer's). */
  parameters?: string[];
  open: () => Readable;
}

export interface SessionOptions {
  heloName: string;
  connectTimeout: number;
  greetingTimeout: number;
  replyTimeout: number;
  /** Where new sessions' transcripts go, and the most text stored per session; null: not recorded. */
  transcripts: { sink: TranscriptSink; maxBytes: number } | null;
  /** The local address to connect from (null: the system's choice). */
  localAddress: string | null;
  /** The (site, source address) pair the sessions count against, and its limits. */
  pair: string;
  pool: PoolLimits;
  /** A reply slower than this is a `slow` signal. */
  slowReply: number;
  /** Told of each new session once its TLS (if any) is judged acceptable, before the first message. */
  opened?: (s: OpenedSession) => void;
}

/** A new outbound session: where it went, its TLS parameters, and its transcript's id (null: not recorded). */
export interface OpenedSession {
  host: string;
  address: string;
  port: number;
  tls: { protocol: string; cipher: string } | null;
  session: string | null;
}

export type Verdict = 'delivered' | 'deferred' | 'bounced';

export interface RecipientOutcome {
  id: number;
  verdict: Verdict;
  code: number;
  status: string;
  reply: string;
  host: string;
  /** The outbound session that gave the reply (its transcript id); absent when none was recorded. */
  session?: string | null;
}

/** `signal`: what the attempt showed of the destination's attitude (delivery-throttle.ts). */
export type HopResult =
  | { kind: 'done'; outcomes: RecipientOutcome[]; signal: Signal }
  | { kind: 'unreachable'; reason: string; code: number; status: string; signal: Signal; session?: string | null };

const ENHANCED = /^[245]\.\d{1,3}\.\d{1,3}/;
/** How long an RSET between transactions may take before the session is given up. */
const RESET_TIMEOUT = 30_000;

/** Splits "550 5.1.1 no such user" into its parts; a reply without an enhanced code gets one from its class. */
export function parseReply(reply: string, fallbackCode = 451): { code: number; status: string; text: string } {
  const line = reply.trim().split(/\r?\n/).pop() ?? '';
  const m = /^(\d{3})[ -]?(.*)$/.exec(line);
  const code = m ? Number(m[1]) : fallbackCode;
  const rest = m ? m[2] : line;
  const enhanced = ENHANCED.exec(rest)?.[0];
  const status = enhanced ?? `${Math.floor(code / 100)}.0.0`;
  return { code, status, text: reply.trim().replace(/\s*\r?\n\s*/g, ' / ') };
}

function verdictOf(code: number): Verdict {
  if (code >= 200 && code < 300) return 'delivered';
  if (code >= 500) return 'bounced';
  return 'deferred';
}

const STARTTLS_OF: Record<TlsLevel, StartTls> = { none: 'never', opportunistic: 'offered', require: 'always', 'require-verified': 'always' };

/** A new connection toward the hop's address, its transcript and reply clock listening. */
function newConnection(hop: NextHop, address: string, opts: SessionOptions, msg: OutboundMessage): { create: () => SmtpConnection; transcript: Transcript | null; clock: ReplyClock } {
  const openedFor = { queueId: msg.queueId, tenant: msg.tenant, recipients: msg.recipients.map((r) => r.address) };
  const transcript = opts.transcripts
    ? new Transcript({ host: hop.name, protocol: hop.protocol, address, port: hop.port, helo: opts.heloName, maxBytes: opts.transcripts.maxBytes, openedFor }, opts.transcripts.sink)
    : null;
  const clock = new ReplyClock(transcript?.logger ?? null);
  const create = () => {
    const conn = new SmtpConnection({
      address, port: hop.port, localAddress: opts.localAddress,
      connectTimeout: opts.connectTimeout, greetingTimeout: opts.greetingTimeout, replyTimeout: opts.replyTimeout,
      // Commands and replies only, never the message: the reply clock always reads them, the transcript when there is one.
      logger: clock.logger,
    });
    transcript?.watch(conn);
    return conn;
  };
  return { create, transcript, clock };
}

/** RSET with a bound: false if the session errors, ends or stays silent (it is then closed). */
async function resetSession(conn: SmtpConnection): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const silent = new Promise<false>((resolve) => { timer = setTimeout(() => resolve(false), RESET_TIMEOUT); });
  const ok = await Promise.race([conn.command('RSET').then((r) => r.code === 250, () => false), silent]).finally(() => clearTimeout(timer));
  if (!ok) conn.close();
  return ok;
}

export async function deliverToHop(hop: NextHop, msg: OutboundMessage, opts: SessionOptions, pool: SmtpPool, tls: HopTls): Promise<HopResult> {
  let lastFailure: HopResult = { kind: 'unreachable', reason: `${hop.name}: no address`, code: 451, status: STATUS.noAnswer, signal: { kind: 'failed', detail: 'no address' } };
  const required = tls.level === 'require' || tls.level === 'require-verified';
  const lmtp = hop.protocol === 'lmtp';
  let signal: Signal | null = null;
  for (const address of hop.addresses) {
    const where = `${hop.name}[${address}]:${hop.port}`;
    const key = `${address}|${hop.port}|${hop.protocol}|${tls.level}|${hop.name}|${opts.localAddress ?? ''}|${opts.heloName}`;
    // The name the certificate must carry: the hop's, or the address when the hop has no name.
    const certName = sniName(hop.name) ?? address;
    const cached = pool.take(key);
    if (cached) {
      if (checkHopTls(tls, cached.conn.socket, certName) === null) {
        carry(cached, msg);
        const result = await transact(cached.conn, msg, where, true, lmtp, cached.transcript?.id);
        // A cached session the peer had already dropped says nothing about the destination: open a fresh one.
        if (result !== 'stale') return finish(pool, key, { ...cached, uses: cached.uses + 1 }, result, opts);
      }
      cached.conn.close();
    }
    const { create, transcript, clock } = newConnection(hop, address, opts, msg);
    const session = transcript?.id;
    let conn: SmtpConnection | null = null;
    let refusal: HandshakeRefusal | null;
    let openWithThis = 0;
    try {
      const opened = await pool.open(opts.pair, opts.pool.maxConnections, create);
      conn = opened.conn;
      openWithThis = opened.openWithThis;
      refusal = await conn.handshake({ name: opts.heloName, lmtp, starttls: STARTTLS_OF[tls.level], tls: starttlsOptions(hop.name, tls.ca) });
    } catch (err) {
      const e = err as ConnectionError;
      conn?.close();
      // A failed handshake (a broken TLS negotiation) on a hop that requires TLS is a TLS failure.
      if (required && e.duringTls) {
        lastFailure = tlsFailure(tls, where, e.message, session);
        continue;
      }
      signal = worse(signal, errorSignal(e.code, e.message));
      lastFailure = { kind: 'unreachable', reason: `${where}: ${failureReason(e)}`, code: 451, status: STATUS.noAnswer, signal, session };
      continue;
    }
    if (refusal) {
      conn.close();
      if (refusal.step === 'starttls') {
        lastFailure = tlsFailure(tls, where, `STARTTLS refused: ${replyString(refusal.reply).trim()}`, session);
        continue;
      }
      lastFailure = { ...refusedFailure(refusal, where, clock, openWithThis, opts.slowReply, signal), session };
      signal = lastFailure.signal;
      continue;
    }
    const problem = checkHopTls(tls, conn.socket, certName);
    if (problem) {
      void conn.quit();
      lastFailure = tlsFailure(tls, where, problem, session);
      continue;
    }
    opts.opened?.({ host: hop.name, address, port: hop.port, tls: tlsOf(conn.socket), session: transcript?.id ?? null });
    const lease: Lease = { conn, uses: 1, reused: false, transcript, clock, pair: opts.pair };
    carry(lease, msg, false);
    const result = await transact(conn, msg, where, false, lmtp, session);
    return finish(pool, key, lease, result as Transacted, opts);
  }
  return lastFailure;
}

function tlsOf(socket: SmtpConnection['socket']): OpenedSession['tls'] {
  if (!socket || !('encrypted' in socket) || !socket.encrypted) return null;
  return { protocol: socket.getProtocol() ?? 'unknown', cipher: socket.getCipher()?.name ?? 'unknown' };
}

/** A greeting or hello that refused the session: unreachable, with the reply's class kept temporary. */
function refusedFailure(refusal: HandshakeRefusal, where: string, clock: ReplyClock, openWithThis: number, slowReply: number, before: Signal | null): HopResult & { kind: 'unreachable' } {
  const text = replyString(refusal.reply);
  const reply = parseReply(text);
  const capped = refusal.step === 'greeting' ? bannerCapSignal(reply.code, text, openWithThis) : null;
  const signal = worse(before, capped ?? replySignal(clock, reply.code, text, slowReply));
  return {
    kind: 'unreachable',
    reason: `${where}: ${text.trim()}`,
    code: reply.code,
    status: reply.code >= 400 ? reply.status.replace(/^5/, '4') : STATUS.noAnswer,
    signal,
  };
}

/** A reply that ended a connection attempt (a 4xx/5xx banner or EHLO answer). */
function replySignal(clock: ReplyClock, code: number, text: string, slowReply: number): Signal {
  const seen = clock.signal(slowReply);
  if (seen.kind !== 'ok') return seen;
  return { kind: 'failed', detail: `${code} ${text.trim()}` };
}

function tlsFailure(tls: HopTls, where: string, problem: string, session: string | undefined): HopResult {
  const reason = `${tlsRefusal(tls, `${where}: ${problem}`)}; not sent`;
  return { kind: 'unreachable', reason, code: 451, status: STATUS.tlsRequired, signal: { kind: 'failed', detail: reason }, session };
}

/** `error`: how the connection broke, when it did without a reply. */
interface Transacted { outcomes: RecipientOutcome[]; clean: boolean; broken: boolean; error?: Signal }

/** The session carries this message now; its replies are judged from here (`fresh`: not the connection's own). */
function carry(lease: Lease, msg: OutboundMessage, fresh = true): void {
  if (fresh) lease.clock.reset();
  lease.transcript?.carry(msg.queueId, msg.tenant, msg.recipients.map((r) => r.address));
}

/**
 * Hands the session back to the pool when it is in a known state (RSET after a failed
 * transaction). A broken session's transcript is handed over by its end.
 */
async function finish(pool: SmtpPool, key: string, lease: Lease, result: Transacted, opts: SessionOptions): Promise<HopResult> {
  let signal = lease.clock.signal(opts.slowReply);
  if (result.broken) {
    lease.conn.close();
    if (result.error) signal = worse(signal, result.error);
    return { kind: 'done', outcomes: result.outcomes, signal };
  }
  const usable = result.clean || await resetSession(lease.conn);
  lease.transcript?.release();
  if (usable) pool.give(key, lease, opts.pool);
  else lease.conn.close();
  return { kind: 'done', outcomes: result.outcomes, signal };
}

/** Groups recipients by their DSN parameters, one transaction each (as deliveries have always been grouped). */
function dsnGroups(recipients: OutboundRecipient[]): OutboundRecipient[][] {
  const groups = new Map<string, OutboundRecipient[]>();
  for (const r of recipients) {
    const key = `${r.notify ?? ''}\0${r.orcpt ?? ''}`;
    const g = groups.get(key);
    if (g) g.push(r); else groups.set(key, [r]);
  }
  return [...groups.values()];
}

/** Every recipient given the same reply (a failed lookup, an unreachable hop, a lost session). */
export function sameOutcome(recipients: OutboundRecipient[], reply: string, host: string, session?: string | null): RecipientOutcome[] {
  const { code, status, text } = parseReply(reply);
  return recipients.map((r) => ({ id: r.id, verdict: verdictOf(code), code, status, reply: text, host, session }));
}

/** How one group's transaction went: `clean` when the session is left outside a transaction. */
type GroupResult = { clean: boolean };

async function transactGroup(conn: SmtpConnection, msg: OutboundMessage, group: OutboundRecipient[], body: Readable, lmtp: boolean, record: (r: OutboundRecipient, reply: Reply | string) => void): Promise<GroupResult> {
  if (conn.maxSize > 0 && msg.size > conn.maxSize) {
    for (const r of group) record(r, `552 ${STATUS.tooBigForHop} message larger than the next hop accepts (SIZE)`);
    return { clean: false };
  }
  const replies = await sendEnvelope(conn, { ...msg, recipients: group });
  if (!isPositive(replies.mail)) {
    // A server that took DATA for a refused sender cannot be trusted with the session.
    if (replies.data && replies.data.code >= 300 && replies.data.code < 400) conn.close();
    for (const r of group) record(r, replies.mail);
    return { clean: false };
  }
  const accepted: OutboundRecipient[] = [];
  group.forEach((r, i) => {
    const reply = replies.rcpt[i];
    if (reply && isPositive(reply)) accepted.push(r);
    else if (reply) record(r, reply);
  });
  const data = replies.data;
  if (accepted.length === 0) {
    // A server that took DATA with no recipient gets an empty message, which goes nowhere.
    if (data && data.code >= 300 && data.code < 400) await conn.command('.');
    return { clean: false };
  }
  if (!data || data.code >= 400) {
    for (const r of accepted) record(r, data ?? deferReply(STATUS.badConnection, 'DATA not sent'));
    return { clean: false };
  }
  const finals = await conn.body(body, lmtp ? accepted.length : 1);
  if (lmtp) {
    // LMTP answers once per accepted recipient, in the order of their RCPTs.
    accepted.forEach((r, i) => record(r, finals[i]));
    return { clean: true };
  }
  for (const r of accepted) record(r, finals[0]);
  return { clean: isPositive(finals[0]) };
}

async function transact(conn: SmtpConnection, msg: OutboundMessage, where: string, reused: boolean, lmtp: boolean, session: string | undefined): Promise<Transacted | 'stale'> {
  const outcomes: RecipientOutcome[] = [];
  let clean = true;
  let broken = false;
  let error: Signal | undefined;
  let needReset = false;
  for (const group of dsnGroups(msg.recipients)) {
    // A failed transaction may leave the peer inside MAIL (every RCPT refused): RSET before the next one.
    if (needReset) {
      if (!(await resetSession(conn))) {
        broken = true;
        break;
      }
      needReset = false;
    }
    const decided = new Set<number>();
    const record = (r: OutboundRecipient, reply: Reply | string) => {
      const { code, status, text } = parseReply(typeof reply === 'string' ? reply : replyString(reply));
      outcomes.push({ id: r.id, verdict: verdictOf(code), code, status, reply: text, host: where, session });
      decided.add(r.id);
    };
    const body = msg.open();
    try {
      const result = await transactGroup(conn, msg, group, body, lmtp, record);
      if (!result.clean) {
        clean = false;
        needReset = true;
      }
    } catch (err) {
      const e = err as ConnectionError;
      // A pooled session that died before the peer read any of the message: nothing was sent, try a fresh one.
      if (reused && outcomes.length === 0 && !body.readableDidRead) return 'stale';
      // Whatever is left failed with the connection.
      for (const r of group) if (!decided.has(r.id)) record(r, deferReply(STATUS.badConnection, `${e.code ?? 'ERROR'}: ${e.message}`));
      clean = false;
      broken = true;
      error = errorSignal(e.code, e.message);
      break;
    } finally {
      body.destroy();
    }
  }
  // Recipients of groups never tried because the connection broke are deferred.
  const done = new Set(outcomes.map((o) => o.id));
  const untried = msg.recipients.filter((r) => !done.has(r.id));
  outcomes.push(...sameOutcome(untried, deferReply(STATUS.badConnection, 'connection lost before this recipient was tried'), where, session));
  return { outcomes, clean, broken, error };
}
