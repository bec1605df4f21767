/*
 * One SMTP (or LMTP) transaction toward a next hop, on nodemailer's SMTP connection.
 *
 * Takes a hop, an envelope and a function that opens the message stream (Ichidan's stored
 * headers followed by the unchanged spool file); tries the hop's addresses in order until one
 * answers, sends with the STARTTLS the hop's TLS level demands (delivery-tls.ts), and returns one
 * outcome per recipient:
 * 2xx delivered, 4xx deferred, 5xx bounced, each with the reply that decided it. A hop that
 * cannot be reached (refused, timeout, greeting refused) is reported as `unreachable` so the
 * caller can try the next MX; so is a hop whose TLS falls short of what its level requires,
 * with a 4.7.x reply naming the rule — the message is never sent over such a session.
 * Sessions are cached per TLS level and name, so a reused session always meets the requirement
 * it was opened for.
 * With transcripts on, each new session gets a Transcript (delivery-transcript.ts) fed by
 * nodemailer's transaction log; each message it carries is tied to it by queue id.
 */
import type { Readable } from 'node:stream';
import SMTPConnection from 'nodemailer/lib/smtp-connection';
import { quit, type Lease, type PoolLimits, type SessionCache } from './smtp/smtp-pool.js';
import type { NextHop } from './delivery-route.js';
import { bannerCapSignal, errorSignal, ReplyClock, worse, type Signal } from './delivery-throttle.js';
import { tlsProblem, type HopTls } from './delivery-tls.js';
import { Transcript, type TranscriptSink } from './delivery-transcript.js';

export interface OutboundRecipient {
  id: number;
  address: string;
  notify: string | null;
  orcpt: string | null;
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
}

export type Verdict = 'delivered' | 'deferred' | 'bounced';

export interface RecipientOutcome {
  id: number;
  verdict: Verdict;
  code: number;
  status: string;
  reply: string;
  host: string;
}

/** `signal`: what the attempt showed of the destination's attitude (delivery-throttle.ts). */
export type HopResult =
  | { kind: 'done'; outcomes: RecipientOutcome[]; signal: Signal }
  | { kind: 'unreachable'; reason: string; code: number; status: string; signal: Signal };

interface SmtpError extends Error {
  code?: string;
  /** nodemailer's name of the step that failed: CONN for the greeting. */
  command?: string;
  responseCode?: number;
  response?: string;
  recipient?: string;
  rejectedErrors?: SmtpError[];
}

const ENHANCED = /^[245]\.\d{1,3}\.\d{1,3}/;

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

function connect(conn: SMTPConnection): Promise<void> {
  return new Promise((resolve, reject) => {
    conn.once('error', reject);
    conn.connect((err?: Error | null) => {
      conn.removeListener('error', reject);
      if (err) reject(err);
      else resolve();
    });
  });
}

function send(conn: SMTPConnection, envelope: object, message: Readable): Promise<{ accepted: string[]; rejected: string[]; rejectedErrors?: SmtpError[]; response: string }> {
  return new Promise((resolve, reject) => {
    const onError = (err: Error) => reject(err);
    conn.once('error', onError);
    conn.send(envelope as never, message as never, (err: Error | null, info: unknown) => {
      conn.removeListener('error', onError);
      if (err) reject(err);
      else resolve(info as never);
    });
  });
}

function newConnection(hop: NextHop, address: string, opts: SessionOptions, tls: HopTls): { conn: SMTPConnection; transcript: Transcript | null; clock: ReplyClock } {
  const transcript = opts.transcripts
    ? new Transcript({ host: hop.name, protocol: hop.protocol, address, port: hop.port, helo: opts.heloName, maxBytes: opts.transcripts.maxBytes }, opts.transcripts.sink)
    : null;
  const clock = new ReplyClock(transcript?.logger ?? null);
  const conn = new SMTPConnection({
    host: address,
    port: hop.port,
    name: opts.heloName,
    ...(opts.localAddress ? { localAddress: opts.localAddress } : {}),
    lmtp: hop.protocol === 'lmtp',
    ignoreTLS: tls.level === 'none',
    opportunisticTLS: tls.level === 'opportunistic',
    requireTLS: tls.level === 'require' || tls.level === 'require-verified',
    // Unverified levels still check, so an MTA-STS testing policy can be told what would fail.
    tls: { rejectUnauthorized: tls.level === 'require-verified', servername: isNameForSni(hop.name) ? hop.name : undefined, ca: tls.ca },
    connectionTimeout: opts.connectTimeout,
    greetingTimeout: opts.greetingTimeout,
    socketTimeout: opts.replyTimeout,
    socketCloseTimeout: 0,
    allowInternalNetworkInterfaces: true,
    // Commands and replies only (`debug` would also log the message itself): the reply clock
    // always reads them, the transcript when there is one.
    logger: clock.logger,
    transactionLog: true,
  } as never);
  transcript?.watch(conn);
  // Errors outside a command we wait for (the peer dropping the session during RSET, QUIT or while
  // idle) are not ours to report; without a listener they would take the process down.
  conn.on('error', () => undefined);
  return { conn, transcript, clock };
}

/** RSET with a bound: resolves false if the session errors, ends or stays silent. */
function resetSession(conn: SMTPConnection, timeoutMs: number): Promise<boolean> {
  return new Promise((resolve) => {
    const done = (ok: boolean) => {
      clearTimeout(timer);
      conn.removeListener('error', onFail);
      conn.removeListener('end', onFail);
      resolve(ok);
    };
    const onFail = () => done(false);
    const timer = setTimeout(onFail, timeoutMs);
    conn.once('error', onFail);
    conn.once('end', onFail);
    conn.reset((err: Error | null) => done(!err));
  });
}

export async function deliverToHop(hop: NextHop, msg: OutboundMessage, opts: SessionOptions, cache: SessionCache, tls: HopTls): Promise<HopResult> {
  let lastFailure: HopResult = { kind: 'unreachable', reason: `${hop.name}: no address`, code: 451, status: '4.4.1', signal: { kind: 'failed', detail: 'no address' } };
  const required = tls.level === 'require' || tls.level === 'require-verified' ? tls.level : null;
  let signal: Signal | null = null;
  for (const address of hop.addresses) {
    const where = `${hop.name}[${address}]:${hop.port}`;
    const key = `${address}|${hop.port}|${hop.protocol}|${tls.level}|${hop.name}|${opts.localAddress ?? ''}|${opts.heloName}`;
    const cached = cache.take(key);
    if (cached) {
      audit(cached.conn, tls);
      carry(cached, msg);
      const result = await transact(cached.conn, msg, where, true, hop.protocol === 'lmtp');
      // A cached session the peer had already dropped says nothing about the destination: open a fresh one.
      if (result !== 'stale') return finish(cache, key, { ...cached, uses: cached.uses + 1 }, result, opts);
      cached.conn.close();
    }
    await cache.makeRoom(opts.pair, opts.pool.maxConnections);
    const { conn, transcript, clock } = newConnection(hop, address, opts, tls);
    cache.opened(opts.pair, conn);
    const openWithThis = cache.openCount(opts.pair);
    try {
      await connect(conn);
    } catch (err) {
      const e = err as SmtpError;
      // A failed handshake (an untrusted or misnamed certificate) surfaces as a socket error.
      const duringTls = e.code === 'ETLS' || (conn as unknown as { upgrading?: boolean }).upgrading === true;
      conn.close();
      if (required && duringTls) {
        lastFailure = tlsFailure(tls, where, e.response ? `STARTTLS refused: ${e.response.trim()}` : e.message);
        continue;
      }
      const reply = e.response ? parseReply(e.response) : null;
      const capped = reply && e.command === 'CONN' ? bannerCapSignal(reply.code, e.response!, openWithThis) : null;
      signal = worse(signal, capped ?? (reply ? replySignal(clock, reply.code, e.response!, opts.slowReply) : errorSignal(e.code, e.message)));
      lastFailure = {
        kind: 'unreachable',
        reason: `${where}: ${e.response ? e.response.trim() : e.code ?? e.message}`,
        code: reply?.code ?? 451,
        status: reply && reply.code >= 400 ? reply.status.replace(/^5/, '4') : '4.4.1',
        signal,
      };
      continue;
    }
    // requireTLS and rejectUnauthorized already refuse; this check is the guarantee that holds
    // whatever the library does with its options.
    const problem = required ? tlsProblem(conn, required) : null;
    if (problem) {
      quit(conn);
      lastFailure = tlsFailure(tls, where, problem);
      continue;
    }
    audit(conn, tls);
    const lease: Lease = { conn, uses: 1, reused: false, transcript, clock, pair: opts.pair };
    carry(lease, msg, false);
    const result = await transact(conn, msg, where, false, hop.protocol === 'lmtp');
    return finish(cache, key, lease, result as Transacted, opts);
  }
  return lastFailure;
}

/** A reply that ended a connection attempt (a 4xx/5xx banner or EHLO answer). */
function replySignal(clock: ReplyClock, code: number, text: string, slowReply: number): Signal {
  const seen = clock.signal(slowReply);
  if (seen.kind !== 'ok') return seen;
  return { kind: 'failed', detail: `${code} ${text.trim()}` };
}

function tlsFailure(tls: HopTls, where: string, problem: string): HopResult {
  const reason = `${tls.rule} requires ${tls.level === 'require' ? 'TLS' : 'verified TLS'}: ${where}: ${problem}; not sent`;
  return { kind: 'unreachable', reason, code: 451, status: '4.7.5', signal: { kind: 'failed', detail: reason } };
}

function audit(conn: SMTPConnection, tls: HopTls): void {
  const problem = tls.audit ? tlsProblem(conn, 'require-verified') : null;
  if (problem) tls.audit!(problem);
}

/** `error`: how the connection broke, when it did without a reply. */
interface Transacted { outcomes: RecipientOutcome[]; clean: boolean; broken: boolean; error?: Signal }

/** The session carries this message now; its replies are judged from here (`fresh`: not the connection's own). */
function carry(lease: Lease, msg: OutboundMessage, fresh = true): void {
  if (fresh) lease.clock.reset();
  lease.transcript?.carry(msg.queueId, msg.tenant, msg.recipients.map((r) => r.address));
}

/**
 * Hands the session back to the cache when it is in a known state (RSET after a failed
 * transaction). A broken session's transcript is handed over by its end.
 */
async function finish(cache: SessionCache, key: string, lease: Lease, result: Transacted, opts: SessionOptions): Promise<HopResult> {
  let signal = lease.clock.signal(opts.slowReply);
  if (result.broken) {
    lease.conn.close();
    if (result.error) signal = worse(signal, result.error);
    return { kind: 'done', outcomes: result.outcomes, signal };
  }
  const usable = result.clean || await resetSession(lease.conn, 30_000);
  lease.transcript?.release();
  if (usable) cache.give(key, lease, opts.pool);
  else lease.conn.close();
  return { kind: 'done', outcomes: result.outcomes, signal };
}

function isNameForSni(name: string): boolean {
  return /[a-z]/i.test(name) && !name.includes(':');
}

/** Groups recipients by their DSN parameters: nodemailer sends one NOTIFY/ORCPT per envelope. */
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
export function sameOutcome(recipients: OutboundRecipient[], reply: string, host: string): RecipientOutcome[] {
  const { code, status, text } = parseReply(reply);
  return recipients.map((r) => ({ id: r.id, verdict: verdictOf(code), code, status, reply: text, host }));
}

async function transact(conn: SMTPConnection, msg: OutboundMessage, where: string, reused: boolean, lmtp: boolean): Promise<Transacted | 'stale'> {
  const outcomes: RecipientOutcome[] = [];
  let clean = true;
  let broken = false;
  let error: Signal | undefined;
  let needReset = false;
  for (const group of dsnGroups(msg.recipients)) {
    // A failed transaction may leave the peer inside MAIL (every RCPT refused): RSET before the next one.
    if (needReset) {
      if (!(await resetSession(conn, 30_000))) {
        broken = true;
        break;
      }
      needReset = false;
    }
    const first = group[0];
    const dsn = (msg.ret || msg.envid || first.notify || first.orcpt)
      ? { ret: msg.ret ?? undefined, envid: msg.envid ?? undefined, notify: first.notify ?? undefined, orcpt: first.orcpt ?? undefined }
      : undefined;
    const envelope = { from: msg.sender === '' ? false : msg.sender, to: group.map((r) => r.address), size: msg.size, dsn, use8BitMime: msg.body8bit };
    const byAddress = new Map(group.map((r) => [r.address.toLowerCase(), r]));
    const decided = new Set<number>();
    const record = (r: OutboundRecipient, reply: string) => {
      const { code, status, text } = parseReply(reply);
      outcomes.push({ id: r.id, verdict: verdictOf(code), code, status, reply: text, host: where });
      decided.add(r.id);
    };
    const body = msg.open();
    try {
      const info = await send(conn, envelope, body);
      for (const e of info.rejectedErrors ?? []) {
        const r = e.recipient ? byAddress.get(e.recipient.toLowerCase()) : undefined;
        if (r && e.response) record(r, e.response);
      }
      // LMTP answers per recipient after DATA; `response` is only the last of those answers.
      const accepted = new Set(info.accepted.map((a) => a.toLowerCase()));
      for (const r of group) {
        if (decided.has(r.id)) continue;
        if (!lmtp) record(r, info.response || '250 2.0.0 OK');
        else if (accepted.has(r.address.toLowerCase())) record(r, '250 2.0.0 delivered (LMTP)');
        else record(r, '451 4.4.2 no LMTP reply for this recipient');
      }
    } catch (err) {
      const e = err as SmtpError;
      // A cached session that died before the peer read any of the message: nothing was sent, try a fresh one.
      if (reused && !e.response && outcomes.length === 0 && !body.readableDidRead) return 'stale';
      clean = false;
      needReset = true;
      if (e.code === 'EMESSAGE' && !e.response && /size/i.test(e.message)) {
        for (const r of group) if (!decided.has(r.id)) record(r, '552 5.3.4 message larger than the next hop accepts (SIZE)');
        continue;
      }
      for (const re of e.rejectedErrors ?? []) {
        const r = re.recipient ? byAddress.get(re.recipient.toLowerCase()) : undefined;
        if (r && re.response && !decided.has(r.id)) record(r, re.response);
      }
      // Whatever is left failed as a whole: MAIL FROM or DATA refused, or the connection broke.
      const reply = e.response ?? `451 4.4.2 ${e.code ?? 'ERROR'}: ${e.message}`;
      for (const r of group) if (!decided.has(r.id)) record(r, reply);
      if (!e.response) {
        broken = true;
        error = errorSignal(e.code, e.message);
        break;
      }
    } finally {
      body.destroy();
    }
  }
  // Recipients of groups never tried because the connection broke are deferred.
  const done = new Set(outcomes.map((o) => o.id));
  const untried = msg.recipients.filter((r) => !done.has(r.id));
  outcomes.push(...sameOutcome(untried, '451 4.4.2 connection lost before this recipient was tried', where));
  return { outcomes, clean, broken, error };
}
