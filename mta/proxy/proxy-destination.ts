/*
 * The destination side of one proxied client connection: the turn at the destination's site, the
 * connection opened or reused on it, and both given back.
 *
 * The first RCPT names a recipient domain, so the destination's site (the one the queued path
 * counts it under, when the address is one of the domain's mail hosts) and host name (for SNI and
 * the certificate check) are known. Before it, the site and host name the address was last seen
 * under in a route may stand for them (for a first MAIL FROM relayed at once); the first RCPT's
 * route then confirms them, or the session gives back what it took there and starts again for the
 * recipient. On that site a slot is taken for the tenant (the
 * scheduler's fairness and caps, waiting at most `proxy.slotWait`), and a connection had from the
 * slot's source address: an idle one from the pools queued delivery uses too (same destination,
 * source, EHLO name and host name; the session's first group shows it alive with RSET), else a new
 * one (greeting, EHLO, STARTTLS whenever offered, verified against the CA store). Each counts
 * against the site's limit or the pair's learnt cap; a refusal at the banner for the number we
 * have open teaches that cap (delivery-throttle.ts, `capped`). A refusal while opening gives the
 * client a 4xx, and the connection and the turn go. Between transactions, and when the client
 * leaves, the connection goes back to the pool when its state is known and it has carried fewer
 * than its share (else QUIT), and the turn to the scheduler; a later transaction is admitted as a
 * delivery would be (holds, pauses) and takes both again at the site and host name it had.
 * Each recipient domain's TLS rule (delivery.tlsPolicy, MTA-STS) is checked against the connection:
 * TLS it requires and the connection lacks, or an MX outside an enforced policy, gets 451 4.7.5.
 * Takes: the original destination, the client's tenant, ProxyDeps (built by proxy-deps.ts).
 * Gives: the connection for the session's transaction steps (proxy-session.ts), replies to refuse
 * with, the throttle signals of what the destination said.
 * Network: TCP/TLS to the original destination only.
 */
import { reply } from '../../base/base-reply.js';
import type { Source } from '../../base/base-site.js';
import { STATUS } from '../../base/base-outcome.js';
import type { RouteDecision } from '../../delivery/delivery-route.js';
import type { DeliverySite } from '../../delivery/delivery-sites.js';
import { bannerCapSignal, errorSignal, ReplyClock, type Signal } from '../../delivery/delivery-throttle.js';
import { checkHopTls, starttlsOptions, tlsRefusal, type TlsPlan } from '../../delivery/delivery-tls.js';
import { Transcript, type TranscriptSink } from '../../delivery/delivery-transcript.js';
import { replyText, SmtpConnection, type Reply } from '../../delivery/smtp/smtp-connection.js';
import { toReply } from '../../delivery/smtp/smtp-wire.js';
import type { Lease, SmtpPool } from '../../delivery/smtp/smtp-pool.js';

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
  /** The mail host name and site an address:port was last seen under in a route (the egress's cache), if any. */
  known(address: string, port: number): { name: string; site: DeliverySite } | undefined;
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

/** Why a session's waits end when its client leaves (given, so that no DOMException is made per session). */
const CLIENT_LEFT = 'the client left';

/** 4xx said to the client for a destination that failed; the detail is for the log and transcript. */
export function tempfail(status: string, detail: string): Reply {
  const text = `destination failed: ${detail}`.replace(/[\r\n]+/g, ' ').slice(0, 400 - status.length - 1);
  return toReply(reply(451, status, text));
}

export class ProxyDestination {
  /**
   * The reply every later command of the transaction gets: the destination failed toward this
   * client, or no turn came (null: neither). The client's next transaction starts afresh.
   */
  failed: Reply | null = null;
  /** A pooled connection not yet shown alive: the first group said on it starts with RSET. */
  unverified = false;
  #conn: SmtpConnection | null = null;
  #slot: Slot | null = null;
  /** The source address of the session's last turn (undefined: it has had none). */
  #lastSource: string | null | undefined = undefined;
  #site: DeliverySite | null = null;
  #hostName: string | null = null;
  /** The site and host name were named from the address alone: the first recipient's route has yet to confirm them. */
  #guessed = false;
  #clock: ReplyClock | null = null;
  #transcript: Transcript | null = null;
  /** The (site, source) pair and pool key of the connection; its messages so far. */
  #pair = '';
  #poolKey = '';
  #uses = 0;
  #closed = false;
  /** Aborted when the client leaves: a wait for a turn ends with it. */
  readonly #leave = new AbortController();

  constructor(readonly target: Destination, readonly tenant: string, private readonly deps: ProxyDeps) {}

  /** The connection the session's commands go on (null: none open for this transaction). */
  get conn(): SmtpConnection | null {
    return this.#conn;
  }

  get site(): string | null {
    return this.#site?.key ?? null;
  }

  /** The source address the slot came with (null: the system's choice, or no slot yet). */
  get source(): string | null {
    return this.#slot?.source.address ?? null;
  }

  /** The client has left (or its session was abandoned): nothing more is opened. */
  get closed(): boolean {
    return this.#closed;
  }

  /** Takes a slot and opens the destination session; resolves with a reply to refuse with, or null when open. */
  async open(domain: string): Promise<Reply | null> {
    const place = await this.#placeOf(domain);
    // A turn taken on a site named from the address alone is kept only when the recipient's route names it too.
    if (this.#guessed) {
      this.#guessed = false;
      if (!this.#isPlace(place)) this.releaseTurn();
    }
    // A session whose data was cut off opens again on the turn it holds.
    if (!this.#slot || !this.#site) {
      this.#site = place.site;
      this.#hostName = place.hostName;
      const refused = await this.#takeTurn();
      if (refused) return refused;
    }
    return this.#connect(place.hostName);
  }

  /**
   * Can the session name the destination's site before any recipient does? Yes when an earlier
   * transaction named it, or when the address was last seen under a site and host name in a route
   * (taken as the session's, for the first recipient to confirm).
   */
  siteKnown(): boolean {
    if (this.#site) return true;
    const known = this.deps.known(this.target.address, this.target.port);
    if (!known) return false;
    this.#site = known.site;
    this.#hostName = known.name;
    this.#guessed = true;
    return true;
  }

  /**
   * Does the recipient domain's route name the site and host name the session took from the
   * address alone (or did a recipient name them already)? False: the caller gives back the
   * connection and the turn, and opens again for this recipient.
   */
  async confirm(domain: string): Promise<boolean> {
    if (!this.#guessed) return true;
    this.#guessed = false;
    return this.#isPlace(await this.#placeOf(domain));
  }

  /** A later transaction's turn and connection, at the site and host name the session had. */
  async reopen(): Promise<Reply | null> {
    if (!this.#slot) {
      const refused = await this.#takeTurn();
      if (refused) return refused;
    }
    return this.#connect(this.#hostName);
  }

  /** May a further transaction start now (null), or why not: it is admitted as a delivery would be, on the last turn's site and source. */
  admission(): string | null {
    const source = this.#slot ? this.#slot.source.address : this.#lastSource;
    return this.#site && source !== undefined ? this.deps.admit(this.#site.key, source, this.tenant) : null;
  }

  /** Is this session fit for the domain's TLS rule? A reply to refuse the recipient with, or null. */
  async tlsRefusal(domain: string): Promise<Reply | null> {
    const { address, port } = this.target;
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
    const problem = checkHopTls(planned.tls, this.#conn?.socket ?? null, planned.hop.name);
    return problem ? refuse(tlsRefusal(planned.tls, problem)) : null;
  }

  /** Ties the transcript's lines from here on to the transaction `link`, whose recipients the destination took are `accepted`. */
  carry(link: string, accepted: string[]): void {
    this.#transcript?.release();
    this.#transcript?.carry(link, this.tenant, accepted);
  }

  /** A message's data starts: its replies are timed afresh, and it counts toward the connection's share. */
  messageStarts(): void {
    this.#clock?.reset();
    this.#uses++;
  }

  /** A message's final reply (or the 4xx that stands for it): the transaction's transcript lines end, and the throttle hears it. */
  messageEnded(final: Reply): void {
    this.#transcript?.release();
    this.signal(final);
  }

  /** The connection, out of the session's hands (to be put back); the turn is still held. */
  take(): SmtpConnection | null {
    const conn = this.#conn;
    this.#conn = null;
    return conn;
  }

  /**
   * Back to the pool when the destination is in a known state (a transaction still open on it,
   * `transactionOpen`, is reset first) and has carried fewer than its share; else QUIT.
   */
  async putBack(conn: SmtpConnection, transactionOpen: boolean): Promise<void> {
    const site = this.#site;
    let usable = !this.failed && !conn.ended && site !== null;
    if (usable && transactionOpen) usable = await conn.command('RSET').then((r) => r.code === 250, () => false);
    if (!usable || !site) return conn.quit();
    const lease: Lease = { conn, uses: this.#uses, reused: false, transcript: this.#transcript, clock: this.#clock!, pair: this.#pair };
    this.#transcript?.release();
    this.deps.pool.give(this.#poolKey, lease, { maxConnections: this.#maxConnections(), messagesPerConnection: site.messagesPerConnection, idleTimeout: site.idleTimeout });
  }

  releaseTurn(): void {
    this.#slot?.release();
    this.#slot = null;
  }

  /** The connection closed at once, in whatever state it is (the turn is kept). */
  drop(): void {
    this.#conn?.close();
    this.#conn = null;
  }

  /** A pooled connection that did not answer its RSET: closed, so that the caller has another opened. */
  dropUnverified(conn: SmtpConnection): void {
    this.unverified = false;
    if (this.#conn === conn) this.#conn = null;
    conn.close();
  }

  /** After a transaction that failed toward the destination (or found no turn): the next one starts on a new turn and connection. */
  startAfresh(): void {
    this.#conn?.close();
    this.#conn = null;
    this.failed = null;
    this.releaseTurn();
  }

  /** The client left: a wait for a turn is given up, and nothing more is opened. */
  leave(): void {
    this.#closed = true;
    this.#leave.abort(CLIENT_LEFT);
  }

  /** The session failed inside the proxy: the connection dropped at once (it may be in the middle of anything), the turn given back. */
  abandon(): void {
    this.leave();
    this.drop();
    this.releaseTurn();
  }

  /** The destination broke or went silent: every later command of this client gets a 4xx. */
  broken(err: unknown): Reply {
    const e = err as NodeJS.ErrnoException;
    this.#signalRaw(errorSignal(e.code, e.message));
    this.#conn?.close();
    // Nothing more goes to this destination for this client: the turn is free for others.
    this.releaseTurn();
    this.failed = tempfail(STATUS.badConnection, `${this.target.address}:${this.target.port}: ${e.code ?? 'error'}: ${e.message}`);
    return this.failed;
  }

  /** What a reply of the destination's tells the throttle: a 421 is a throttle, else what the reply times say. */
  signal(reply: Reply): void {
    const seen = this.#clock?.signal(this.#site?.slowReply ?? Infinity) ?? { kind: 'ok' as const, detail: '' };
    this.#signalRaw(reply.code === 421 && seen.kind !== 'throttled' ? { kind: 'throttled', detail: replyText(reply) } : seen);
  }

  /** The site and host name a recipient domain's route gives the original destination (its own `addr:` site when no route names it). */
  async #placeOf(domain: string): Promise<{ site: DeliverySite; hostName: string | null }> {
    const { address, port } = this.target;
    try {
      const { decision, site } = await this.deps.route(domain);
      const hop = decision.kind === 'hops' ? decision.hops.find((h) => h.port === port && h.addresses.includes(address)) : undefined;
      if (hop) return { site, hostName: hop.name };
    } catch {
      // no route knowledge: the address stands for itself
    }
    return { site: this.deps.siteLimits(`addr:${address}:${port}`), hostName: null };
  }

  #isPlace(place: { site: DeliverySite; hostName: string | null }): boolean {
    return place.site.key === this.#site?.key && place.hostName === this.#hostName;
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
    const { address, port } = this.target;
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
      this.#conn = conn;
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
      return this.broken(err);
    }
  }

  /**
   * An idle destination session kept by an earlier client of the same destination, source and
   * name, reused (saving the connect, greeting, EHLO and TLS): the RSET that shows it alive goes
   * out in the same write as the transaction's first commands (the session's relay).
   */
  #reuse(): boolean {
    const lease = this.deps.pool.take(this.#poolKey);
    if (!lease) return false;
    this.#transcript = lease.transcript;
    this.#clock = lease.clock;
    this.#conn = lease.conn;
    this.#uses = lease.uses;
    this.unverified = true;
    return true;
  }

  #refusedOpen(reply: Reply, signal = true): Reply {
    if (signal) this.signal(reply);
    // The connection and the turn go; the client's next transaction asks for both again.
    const conn = this.#conn;
    this.#conn = null;
    if (conn) void conn.quit();
    this.releaseTurn();
    // Even a 5xx at the banner or to EHLO (a blocklisted source address, say) is about this
    // connection, not the recipients: the client defers, as queued delivery does.
    return tempfail(STATUS.badConnection, `${this.target.address}:${this.target.port}: ${replyText(reply)} (${reply.code})`);
  }

  /** The site's limit, or the pair's learnt cap when that is lower. */
  #maxConnections(): number {
    const site = this.#site!;
    return Math.min(site.limits.maxConnections, this.deps.connections(site.key, this.#slot?.source.address ?? null) ?? Infinity);
  }

  #signalRaw(signal: Signal): void {
    if (!this.#site || !this.#slot) return;
    this.deps.signal(this.#site.key, this.#slot.source.address, this.tenant, signal);
  }
}
