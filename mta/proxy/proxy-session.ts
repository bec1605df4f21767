/*
 * The destination side of one proxied client connection.
 *
 * A legacy MTA's connection was redirected to the proxy; its original destination (address,
 * port) is where this session relays, command by command, for as long as the client stays:
 *   - the first RCPT of the session names a recipient domain, so the destination's site (the
 *     same site the queued path would count it under, when the address is one of the domain's
 *     mail hosts) and its host name (for SNI and the certificate check) are known; only then is a
 *     slot taken at that site for the tenant (the scheduler's fairness and caps, waiting at most
 *     `proxy.slotWait`), the connection opened from the source address the slot came with, EHLO
 *     and STARTTLS (verified against the CA store, checked by name later) said, and the MAIL FROM
 *     the client gave relayed. The turn is held for one transaction: after its final reply the
 *     destination connection goes back to the pool and the turn to the scheduler, so a client
 *     that keeps its connection open holds no share of the site while idle; its next transaction
 *     is admitted (holds, pauses) and takes a turn and a pooled connection again. A transaction
 *     that failed toward the destination, or found no turn, leaves the next one to start afresh.
 *     A destination that refuses the connection at its banner for the number we have open teaches
 *     the pair its cap (delivery-throttle.ts, `capped`); the client gets a 4xx and retries.
 *   - each RCPT is relayed and its reply passed back, after the recipient domain's TLS rule
 *     (delivery.tlsPolicy, MTA-STS) is checked against this session: a domain that requires
 *     (verified) TLS this session does not have, or an MX outside an enforced policy, gets
 *     451 4.7.5 and is never sent to;
 *   - DATA streams through (bounded memory), the destination's final reply goes back; a
 *     destination that fails or stays silent gives the client a 4xx, never a silent loss.
 * Everything said on the destination side is recorded by the same Transcript as queued sessions,
 * and each delivery leaves the same throttle signal. Destination sessions go to the same pools as
 * queued delivery's between transactions and when the client leaves (after RSET), so the next
 * transaction for that destination and source reuses one, and every open connection counts
 * against the site's limit (or the pair's learnt cap).
 * Network: TCP/TLS to the original destination only.
 */
import type { Readable } from 'node:stream';
import { reply } from '../../base/base-reply.js';
import type { Source } from '../../base/base-site.js';
import type { Dispatch } from '../../queue/queue-scheduler.js';
import type { RouteDecision } from '../../delivery/delivery-route.js';
import type { DeliverySite } from '../../delivery/delivery-sites.js';
import { bannerCapSignal, errorSignal, ReplyClock, type Signal } from '../../delivery/delivery-throttle.js';
import { checkHopTls, starttlsOptions, tlsRefusal, type TlsPlan } from '../../delivery/delivery-tls.js';
import { Transcript, type TranscriptSink } from '../../delivery/delivery-transcript.js';
import { replyText, SmtpConnection, type Reply } from '../../delivery/smtp/smtp-connection.js';
import { toReply } from '../../delivery/smtp/smtp-wire.js';
import type { Lease, SmtpPool } from '../../delivery/smtp/smtp-pool.js';
import { STATUS } from '../../base/base-outcome.js';

export interface Destination {
  address: string;
  port: number;
}

export interface Slot {
  site: string;
  source: Source;
  release(): void;
}

export interface ProxyDeps {
  heloName: string;
  connectTimeout: number;
  replyTimeout: number;
  ca: string[] | undefined;
  /** Route and site of a recipient domain (the egress's cache). */
  route(domain: string): Promise<{ decision: RouteDecision; site: DeliverySite }>;
  /** The TLS rule of a recipient domain for the given hops. */
  tlsPlan(domain: string, via: 'route' | 'mx', hops: Array<{ name: string; addresses: string[]; port: number; protocol: 'smtp' | 'lmtp' }>): Promise<TlsPlan>;
  /** The default limits of a site by key (for an address no route names). */
  siteLimits(key: string): DeliverySite;
  /** A turn at the site for the tenant: resolves when the scheduler gives one, rejects after the wait or when `leave` aborts. */
  acquire(tenant: string, site: DeliverySite, leave: AbortSignal): Promise<Slot>;
  transcripts: { sink: TranscriptSink; maxBytes: number } | null;
  signal(site: string, source: string | null, tenant: string, signal: Signal): void;
  /** Connections the pair may have open when a learnt cap holds it below the site's limit (undefined: the site's limit). */
  connections(site: string, source: string | null): number | undefined;
  /** May a session already holding its turn start another transaction (null), or why not. */
  admit(site: string, source: string | null, tenant: string): string | null;
  /** "address|port" of every open destination connection: one that comes back to the proxy is a loop. */
  outbound: Set<string>;
  /** The pools shared with queued delivery: idle destination sessions, and every connection counted per (site, source). */
  pool: SmtpPool;
}

export interface TransactionSummary {
  sender: string;
  recipients: Array<{ address: string; reply: string }>;
  /** Milliseconds from the client's MAIL FROM to the destination's 354 (null: DATA never started). */
  msTo354: number | null;
  final: string | null;
  bytes: number;
}

/** The ESMTP parameters a destination understands, by the extensions it offered (others are dropped, not refused). */
export function keepParams(params: string, extensions: Map<string, string>): string {
  const needs: Record<string, string> = { SIZE: 'SIZE', BODY: '8BITMIME', SMTPUTF8: 'SMTPUTF8', RET: 'DSN', ENVID: 'DSN', NOTIFY: 'DSN', ORCPT: 'DSN' };
  return params.split(/\s+/).filter((w) => {
    const key = w.split('=')[0].toUpperCase();
    return w !== '' && needs[key] !== undefined && extensions.has(needs[key]);
  }).join(' ');
}

/** Why a session's waits end when its client leaves (given, so that no DOMException is made per session). */
const CLIENT_LEFT = 'the client left';

/** #relay's answer when a pooled destination session turned out gone: the caller opens another. */
const RETRY = Symbol('retry');

/**
 * Command lines one at a time (a destination without PIPELINING, or a client that did not group
 * them), up to the first that is refused. With PIPELINING, a leading RSET of ours goes with the first.
 */
async function oneByOne(client: SmtpConnection, lines: string[], before: (i: number) => void, pipelining: boolean): Promise<Reply[]> {
  const replies: Reply[] = [];
  let i = 0;
  while (i < lines.length) {
    const n = pipelining && i === 0 && lines[0] === 'RSET' && lines.length > 1 ? 2 : 1;
    const from = i;
    const got = await client.pipeline(lines.slice(i, i + n), (k) => before(from + k));
    replies.push(...got);
    i += n;
    if (got.some((r) => r.code >= 400)) break;
  }
  return replies;
}

/** The error code the listener's guard gives the client's data it refused on the way. */
export const REFUSED_BY_PROXY = 'EREFUSED';

/** 4xx said to the client for a destination that failed; the detail is for the log and transcript. */
function tempfail(status: string, detail: string): Reply {
  const text = `destination failed: ${detail}`.replace(/[\r\n]+/g, ' ').slice(0, 400 - status.length - 1);
  return toReply(reply(451, status, text));
}

export class ProxySession {
  #client: SmtpConnection | null = null;
  #slot: Slot | null = null;
  /** The source address of the session's last turn (undefined: it has had none). */
  #lastSource: string | null | undefined = undefined;
  #site: DeliverySite | null = null;
  #hostName: string | null = null;
  #clock: ReplyClock | null = null;
  #transcript: Transcript | null = null;
  #mail: { from: string; params: string } | null = null;
  #mailReply: Reply | null = null;
  #inTransaction = false;
  /** A pooled destination session not yet shown alive: its first group starts with RSET. */
  #unverified = false;
  /** The client pipelined this transaction's commands (its RCPT came in the same turn as its MAIL): so are they relayed. */
  #pipelined = false;
  /** Whether the RCPT being relayed came in the same turn as its MAIL. */
  #grouped = false;
  /** The destination's reply to a DATA relayed in one group with the last RCPT, until the client's data uses it. */
  #dataReply: Reply | null = null;
  #failed: Reply | null = null;
  #startedAt = 0;
  #summary: TransactionSummary | null = null;
  #seq = 0;
  /** Recipients of the current transaction the destination took (the transcript's link holds this array). */
  #accepted: string[] = [];
  #closed = false;
  /** The command under way toward the destination (settled when none is). */
  #step: Promise<unknown> = Promise.resolve();
  /** Aborted when the client leaves: a wait for a turn ends with it. */
  readonly #leave = new AbortController();
  #opening: Promise<Reply | null> | null = null;
  /** The (site, source) pair and pool key of the destination session; its messages so far. */
  #pair = '';
  #poolKey = '';
  #uses = 0;

  /** `id` names the client's session: its transactions are `<id>.1`, `<id>.2`… in the transcript. */
  constructor(readonly id: string, readonly destination: Destination, readonly tenant: string, private readonly deps: ProxyDeps) {}

  get site(): string | null {
    return this.#site?.key ?? null;
  }

  /** The source address the session's slot came with (null: the system's choice, or no slot yet). */
  get source(): string | null {
    return this.#slot?.source.address ?? null;
  }

  /**
   * MAIL FROM: relayed at once when the session is open, or when the client waits for its reply
   * (`clientWaits`: nothing came after it) and an earlier transaction named the destination's site,
   * so that the destination's own reply is the client's; else kept for the first RCPT.
   */
  mail(from: string, params: string, clientWaits = false): Promise<Reply> {
    return this.#track(this.#mailNow(from, params, clientWaits));
  }

  async #mailNow(from: string, params: string, clientWaits: boolean): Promise<Reply> {
    this.#settleData();
    if (this.#failed) {
      // An earlier transaction failed toward the destination (or found no turn): this one starts
      // afresh, on a new turn and a pooled or new connection.
      this.#client?.close();
      this.#client = null;
      this.#failed = null;
      this.#slot?.release();
      this.#slot = null;
    }
    this.#mail = { from, params };
    this.#mailReply = null;
    this.#summary = { sender: from, recipients: [], msTo354: null, final: null, bytes: 0 };
    this.#startedAt = Date.now();
    // Each further transaction is admitted as a delivery would be: holds, pauses and rates in force now.
    const source = this.#slot ? this.#slot.source.address : this.#lastSource;
    const refusal = this.#site && source !== undefined ? this.deps.admit(this.#site.key, source, this.tenant) : null;
    if (refusal) return toReply(reply(451, STATUS.notAllowedNow, `${refusal}; try again later`));
    if (!this.#client && clientWaits && this.#site) {
      // Its turn and a pooled (or new) connection now, on the site the last transaction had.
      this.#opening = this.#reopen();
      const opened = await this.#opening;
      this.#opening = null;
      if (opened) return opened;
    }
    if (!this.#client) {
      // What the client sends in this same turn (its RCPTs, DATA) it sent in one group: relayed as one.
      this.#pipelined = true;
      setImmediate(() => { this.#pipelined = false; });
      return toReply(reply(250, '2.1.0', 'Ok'));
    }
    const relayed = await this.#relay(null);
    // A pooled session found gone: this MAIL goes with the first RCPT, on another.
    return relayed === RETRY ? toReply(reply(250, '2.1.0', 'Ok')) : relayed.mail;
  }

  /**
   * RCPT TO: relayed (with the MAIL FROM kept for it), its reply passed back. `dataFollows`: the
   * client has already sent DATA right after this RCPT and its message is not scanned, so DATA
   * goes to the destination in the same group; the client's data then uses its reply.
   */
  rcpt(to: string, params: string, dataFollows = false): Promise<Reply> {
    // Read now: the turn the RCPT came in is over by the time the destination is open.
    this.#grouped = this.#pipelined;
    return this.#track(this.#rcptNow(to, params, dataFollows));
  }

  async #rcptNow(to: string, params: string, dataFollows: boolean): Promise<Reply> {
    const domain = to.slice(to.lastIndexOf('@') + 1).toLowerCase();
    const reply = await this.#rcpt(to, domain, params, dataFollows);
    this.#summary?.recipients.push({ address: to, reply: reply.raw });
    return reply;
  }

  async #rcpt(to: string, domain: string, params: string, dataFollows: boolean): Promise<Reply> {
    // A DATA relayed early that the client did not follow with its data: that transaction is broken off.
    if (this.#settleData()) this.#failed = tempfail(STATUS.badConnection, 'the client sent another RCPT after its DATA');
    for (;;) {
      if (!this.#client && !this.#failed) {
        this.#opening = this.#open(domain);
        const opened = await this.#opening;
        this.#opening = null;
        if (opened) return (this.#failed = opened);
      }
      if (this.#failed || !this.#client) return this.#failed ?? tempfail(STATUS.noAnswer, 'not connected');
      if (this.#mailReply && this.#mailReply.code !== 250) return this.#mailReply;
      // A recipient the session is not fit for is refused before anything of it is said.
      const refused = await this.#tlsRefusal(domain);
      if (refused) return refused;
      if (!this.#client) continue;
      const kept = keepParams(params, this.#client.extensions);
      const relayed = await this.#relay(`RCPT TO:<${to}>${kept ? ' ' + kept : ''}`, dataFollows);
      // A pooled session found gone before its RSET was answered: another one, or a new one.
      if (relayed === RETRY) continue;
      if (relayed.mail.code !== 250) return relayed.mail;
      const reply = relayed.last!;
      if (reply.code >= 200 && reply.code < 300) this.#accepted.push(to);
      return reply;
    }
  }

  /** Streams the message; resolves with the destination's final reply (or a 4xx when it failed). */
  data(body: Readable): Promise<Reply> {
    return this.#track(this.#dataNow(body));
  }

  async #dataNow(body: Readable): Promise<Reply> {
    const client = this.#client;
    const early = this.#dataReply;
    this.#dataReply = null;
    if (!client || this.#failed) {
      body.resume();
      return this.#failed ?? tempfail(STATUS.noAnswer, 'not connected');
    }
    this.#clock?.reset();
    let reply: Reply;
    try {
      this.#uses++;
      const progress = (bytes: number) => {
        if (!this.#summary) return;
        if (this.#summary.msTo354 === null) this.#summary.msTo354 = Date.now() - this.#startedAt;
        this.#summary.bytes = bytes;
      };
      if (early && early.code !== 354) {
        body.resume();
        reply = early;
      } else {
        reply = early ? (await client.body(body, 1, progress))[0] : await client.data(body, progress);
      }
      this.#inTransaction = false;
    } catch (err) {
      reply = (err as NodeJS.ErrnoException).code === REFUSED_BY_PROXY ? this.#cutOff() : this.#broken(err);
    }
    this.#transcript?.release();
    if (this.#summary) this.#summary.final = reply.raw;
    this.#signal(reply);
    await this.#yieldTurn();
    return reply;
  }

  /** The message will not be relayed (scanning refused or held it): the destination's transaction is reset; `reply` goes to the client. */
  abort(reply: Reply): Promise<Reply> {
    return this.#track(this.#abortNow(reply));
  }

  async #abortNow(reply: Reply): Promise<Reply> {
    this.#settleData();
    if (this.#client && !this.#failed && this.#inTransaction) {
      const reset = await this.#command('RSET');
      if (reset.code === 250) this.#inTransaction = false;
    }
    if (this.#summary) this.#summary.final = reply.raw;
    return reply;
  }

  /** What the last transaction did, once (for the event sinks); null when already taken or none began. */
  takeSummary(): TransactionSummary | null {
    const summary = this.#summary;
    this.#summary = null;
    return summary && summary.recipients.length > 0 ? summary : null;
  }

  /**
   * The client left: a wait for a turn is given up, an opening under way is let finish (its
   * connection then counts against the site until it is closed here), QUIT toward the
   * destination, and the turn given back.
   */
  async close(): Promise<void> {
    this.#closed = true;
    this.#leave.abort(CLIENT_LEFT);
    await this.#opening?.catch(() => undefined);
    // A command still waiting for the destination's reply (the client left after its final dot)
    // gets it first: a connection is pooled only between commands, never with a reply owed.
    await this.#step;
    const client = this.#client;
    this.#client = null;
    if (client) await this.#putBack(client);
    this.#slot?.release();
    this.#slot = null;
  }

  #track(step: Promise<Reply>): Promise<Reply> {
    this.#step = step.catch(() => undefined);
    return step;
  }

  /**
   * Between transactions the destination connection goes back to the pool and the turn back to
   * the scheduler: a client that keeps its connection open, idle, holds neither, and the site's
   * turns go round the tenants per message, as queued delivery's do. The next transaction takes a
   * turn and a pooled connection again (most often this same one).
   */
  async #yieldTurn(): Promise<void> {
    const client = this.#client;
    if (!client || this.#failed || this.#closed) return;
    this.#client = null;
    await this.#putBack(client);
    this.#slot?.release();
    this.#slot = null;
  }

  /**
   * An idle destination session kept by an earlier client of the same destination, source and
   * name, reused (saving the connect, greeting, EHLO and TLS): the RSET that shows it alive goes
   * out in the same write as the transaction's first commands (#relay).
   */
  #reuse(): boolean {
    const lease = this.deps.pool.take(this.#poolKey);
    if (!lease) return false;
    this.#transcript = lease.transcript;
    this.#clock = lease.clock;
    this.#client = lease.conn;
    this.#uses = lease.uses;
    this.#unverified = true;
    return true;
  }

  /**
   * A DATA relayed early whose 354 no data followed (the client left, or sent something else): the
   * destination waits for a message that will not come, and only closing the connection ends that
   * without delivering anything. True when it was closed.
   */
  #settleData(): boolean {
    const early = this.#dataReply;
    this.#dataReply = null;
    if (early?.code !== 354) return false;
    this.#client?.close();
    this.#client = null;
    this.#inTransaction = false;
    this.#mailReply = null;
    return true;
  }

  /** Back to the pool when the destination is in a known state and has carried fewer than its share; else QUIT. */
  async #putBack(client: SmtpConnection): Promise<void> {
    if (this.#settleData()) return;
    const site = this.#site;
    let usable = !this.#failed && !client.ended && site !== null;
    if (usable && this.#inTransaction) {
      usable = await client.command('RSET').then((r) => r.code === 250, () => false);
      this.#inTransaction = false;
    }
    if (!usable || !site) return client.quit();
    const lease: Lease = { conn: client, uses: this.#uses, reused: false, transcript: this.#transcript, clock: this.#clock!, pair: this.#pair };
    this.#transcript?.release();
    this.deps.pool.give(this.#poolKey, lease, { maxConnections: this.#maxConnections(), messagesPerConnection: site.messagesPerConnection, idleTimeout: site.idleTimeout });
  }

  /**
   * Says to the destination what it must hear before `line` (a RCPT), then `line`: RSET when its
   * state is not known to be clean (a pooled session not yet shown alive, or a transaction the
   * client started over), the transaction's MAIL FROM when it has not gone yet. All in one write
   * when the destination offers PIPELINING (RFC 2920: RSET, MAIL and RCPT may be grouped), else
   * one by one, stopping at the first refusal. Resolves with the reply that stands for MAIL (the
   * RSET's when that failed) and the reply to `line`; RETRY when the session was a pooled one
   * found gone (its connection is dropped, nothing was done there).
   */
  async #relay(line: string | null, dataFollows = false): Promise<{ mail: Reply; last: Reply | null } | typeof RETRY> {
    const client = this.#client!;
    const reset = this.#unverified || (this.#inTransaction && !this.#mailReply);
    const sendMail = !this.#mailReply;
    const pipelining = client.extensions.has('PIPELINING');
    // Only what the client itself grouped goes as one group (and our RSET with it): a client that
    // waits for each reply gets its commands relayed one by one, as it sent them.
    const grouped = pipelining && (this.#grouped || !sendMail);
    const withData = grouped && dataFollows && line !== null;
    const lines: string[] = [];
    if (reset) lines.push('RSET');
    if (sendMail) {
      const m = this.#mail!;
      const kept = keepParams(m.params, client.extensions);
      lines.push(`MAIL FROM:<${m.from}>${kept ? ' ' + kept : ''}`);
    }
    if (line !== null) lines.push(line);
    if (withData) lines.push('DATA');
    const mailAt = sendMail ? (reset ? 1 : 0) : -1;
    // The transaction's lines are tied to it in the transcript; its link lists the recipients the destination takes.
    const carry = (i: number) => {
      if (i !== mailAt) return;
      this.#transcript?.release();
      this.#accepted = [];
      this.#transcript?.carry(`${this.id}.${++this.#seq}`, this.tenant, this.#accepted);
    };
    let replies: Reply[];
    try {
      replies = pipelining && (grouped || lines.length === 1 || (reset && !sendMail)) ? await client.pipeline(lines, carry) : await oneByOne(client, lines, carry, pipelining);
    } catch (err) {
      if (this.#unverified) return this.#dropUnverified(client);
      return { mail: this.#broken(err), last: null };
    }
    const closing = replies.find((r) => r.code === 421);
    if (closing && !this.#unverified) {
      this.#failed = closing;
      this.#signal(closing);
    }
    let at = 0;
    if (reset) {
      const r = replies[at++];
      if (this.#unverified && r?.code !== 250) return this.#dropUnverified(client);
      this.#unverified = false;
      if (r.code !== 250) return { mail: r, last: null };
      this.#inTransaction = false;
    }
    if (sendMail) {
      const r = replies[at++];
      if (!r) return { mail: this.#mailReply ?? tempfail(STATUS.noAnswer, 'no reply'), last: null };
      this.#mailReply = r;
      this.#inTransaction = r.code === 250;
    }
    const last = line === null ? null : replies[at] ?? null;
    if (withData) this.#dataReply = replies[at + 1] ?? null;
    return { mail: this.#mailReply!, last };
  }

  /** The pooled session did not answer its RSET: closed, and the caller tries another. */
  #dropUnverified(client: SmtpConnection): typeof RETRY {
    this.#unverified = false;
    if (this.#client === client) this.#client = null;
    client.close();
    return RETRY;
  }

  /** Takes a slot and opens the destination session; resolves with a reply to refuse with, or null when open. */
  async #open(domain: string): Promise<Reply | null> {
    const { address, port } = this.destination;
    let hostName: string | null = null;
    let site: DeliverySite | null = null;
    try {
      const { decision, site: routed } = await this.deps.route(domain);
      const hop = decision.kind === 'hops' ? decision.hops.find((h) => h.port === port && h.addresses.includes(address)) : undefined;
      if (hop) {
        hostName = hop.name;
        site = routed;
      }
    } catch {
      // no route knowledge: the address stands for itself
    }
    // A session whose data was cut off opens again on the turn it holds.
    if (!this.#slot || !this.#site) {
      this.#site = site ?? this.deps.siteLimits(`addr:${address}:${port}`);
      this.#hostName = hostName;
      const refused = await this.#takeTurn();
      if (refused) return refused;
    }
    return this.#connect(hostName);
  }

  /** A later transaction's turn and connection, at the site and host name the session had. */
  async #reopen(): Promise<Reply | null> {
    if (!this.#slot) {
      const refused = await this.#takeTurn();
      if (refused) return refused;
    }
    return this.#connect(this.#hostName);
  }

  /** Waits for a turn at the session's site; a reply to refuse with when none came. */
  async #takeTurn(): Promise<Reply | null> {
    try {
      this.#slot = await this.deps.acquire(this.tenant, this.#site!, this.#leave.signal);
      this.#lastSource = this.#slot.source.address;
      return null;
    } catch (err) {
      return tempfail(STATUS.congestion, (err as Error).message);
    }
  }

  /** On the turn held: a pooled destination session, else a new one (greeting, EHLO, STARTTLS); a reply to refuse with, or null. */
  async #connect(hostName: string | null): Promise<Reply | null> {
    const { address, port } = this.destination;
    if (this.#closed || !this.#slot || !this.#site) return tempfail(STATUS.congestion, 'the client left');
    const source = this.#slot.source;
    const helo = source.helo ?? this.deps.heloName;
    this.#pair = `${this.#site.key}\u0000${source.address ?? ''}`;
    this.#poolKey = `proxy|${address}|${port}|${source.address ?? ''}|${helo}|${hostName ?? ''}`;
    if (this.#reuse()) return null;
    const transcript = this.deps.transcripts
      ? new Transcript({ host: hostName ?? address, protocol: 'smtp', address, port, helo, maxBytes: this.deps.transcripts.maxBytes }, this.deps.transcripts.sink)
      : null;
    const clock = new ReplyClock(transcript?.logger ?? null);
    this.#transcript = transcript;
    this.#clock = clock;
    const create = () => {
      const conn = new SmtpConnection({ address, port, localAddress: source.address, connectTimeout: this.deps.connectTimeout, replyTimeout: this.deps.replyTimeout, logger: clock.logger });
      transcript?.watch(conn);
      return conn;
    };
    try {
      const { conn, openWithThis } = await this.deps.pool.open(this.#pair, this.#maxConnections(), create);
      this.#client = conn;
      this.#uses = 0;
      const local = `${conn.socket?.localAddress?.replace(/^::ffff:/i, '')}|${conn.socket?.localPort}`;
      this.deps.outbound.add(local);
      conn.once('end', () => this.deps.outbound.delete(local));
      // STARTTLS whenever offered; whether the session is fit for a recipient domain is judged per RCPT.
      const refusal = await conn.handshake({ name: helo, lmtp: false, starttls: 'offered', tls: starttlsOptions(hostName ?? address, this.deps.ca) });
      if (refusal?.step === 'greeting') {
        // A refusal for the number of our connections teaches the pair's cap; the client retries.
        const capped = bannerCapSignal(refusal.reply.code, replyText(refusal.reply), openWithThis);
        if (capped) this.#signalRaw(capped);
        return this.#refusedOpen(refusal.reply, capped === null);
      }
      return refusal ? this.#refusedOpen(refusal.reply) : null;
    } catch (err) {
      return this.#broken(err);
    }
  }

  #refusedOpen(reply: Reply, signal = true): Reply {
    if (signal) this.#signal(reply);
    // The connection and the turn go; the client's next transaction asks for both again.
    const client = this.#client;
    this.#client = null;
    if (client) void client.quit();
    this.#slot?.release();
    this.#slot = null;
    // Even a 5xx at the banner or to EHLO (a blocklisted source address, say) is about this
    // connection, not the recipients: the client defers, as queued delivery does.
    return tempfail(STATUS.badConnection, `${this.destination.address}:${this.destination.port}: ${replyText(reply)} (${reply.code})`);
  }

  /** Is this session fit for the domain's TLS rule? A reply to refuse the recipient with, or null. */
  async #tlsRefusal(domain: string): Promise<Reply | null> {
    const { address, port } = this.destination;
    let decision: RouteDecision | null = null;
    try {
      decision = (await this.deps.route(domain)).decision;
    } catch {
      decision = null;
    }
    const hops = decision?.kind === 'hops' ? decision.hops.filter((h) => h.port === port && h.addresses.includes(address)) : [];
    const hop = hops[0] ?? { name: this.#hostName ?? address, addresses: [address], port, protocol: 'smtp' as const };
    const plan = await this.deps.tlsPlan(domain, decision?.kind === 'hops' ? decision.via : 'mx', [hop]);
    const refuse = (reason: string): Reply => toReply(reply(451, STATUS.tlsRequired, `${reason}; not sent`));
    if (plan.kind === 'defer') return refuse(plan.reason);
    const planned = plan.hops[0];
    if (!planned) return refuse(`no usable mail host of ${domain} is ${address}`);
    const problem = checkHopTls(planned.tls, this.#client?.socket ?? null, planned.hop.name);
    return problem ? refuse(tlsRefusal(planned.tls, problem)) : null;
  }

  async #command(line: string): Promise<Reply> {
    try {
      const reply = await this.#client!.command(line);
      if (reply.code === 421) {
        this.#failed = reply;
        this.#signal(reply);
      }
      return reply;
    } catch (err) {
      return this.#broken(err);
    }
  }

  /**
   * The client's data was refused on the way (a bare line ending, too big): the destination's
   * connection was closed before the final dot, which says nothing about the destination. The
   * client keeps its turn; its next transaction opens a fresh connection.
   */
  #cutOff(): Reply {
    this.#client?.close();
    this.#client = null;
    this.#inTransaction = false;
    return tempfail(STATUS.badConnection, 'the message data was refused');
  }

  /**
   * The session failed inside the proxy: the destination connection is dropped at once (it may
   * be in the middle of anything) and the turn given back. `close()` then has nothing left to do.
   */
  abandon(): void {
    this.#closed = true;
    this.#leave.abort(CLIENT_LEFT);
    this.#client?.close();
    this.#client = null;
    this.#slot?.release();
    this.#slot = null;
  }

  /** The destination broke or went silent: every later command of this client gets a 4xx. */
  #broken(err: unknown): Reply {
    const e = err as NodeJS.ErrnoException;
    this.#signalRaw(errorSignal(e.code, e.message));
    this.#client?.close();
    // Nothing more goes to this destination for this client: the turn is free for others.
    this.#slot?.release();
    this.#slot = null;
    this.#failed = tempfail(STATUS.badConnection, `${this.destination.address}:${this.destination.port}: ${e.code ?? 'error'}: ${e.message}`);
    return this.#failed;
  }

  /** The site's limit, or the pair's learnt cap when that is lower. */
  #maxConnections(): number {
    const site = this.#site!;
    return Math.min(site.limits.maxConnections, this.deps.connections(site.key, this.#slot?.source.address ?? null) ?? Infinity);
  }

  #signal(reply: Reply): void {
    const seen = this.#clock?.signal(this.#site?.slowReply ?? Infinity) ?? { kind: 'ok' as const, detail: '' };
    this.#signalRaw(reply.code === 421 && seen.kind !== 'throttled' ? { kind: 'throttled', detail: replyText(reply) } : seen);
  }

  #signalRaw(signal: Signal): void {
    if (!this.#site || !this.#slot) return;
    this.deps.signal(this.#site.key, this.#slot.source.address, this.tenant, signal);
  }

}

export type { Dispatch };
