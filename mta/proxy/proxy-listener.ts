/*
 * The transparent proxy listener: legacy MTAs' port-25 traffic, DNAT'ed or redirected here by
 * netfilter, relayed live to the destination each connection was addressed to.
 *
 * Client side (smtp-server): Ichidan answers the banner and EHLO itself (STARTTLS toward the
 * client when the listener's `tls` is starttls, with Ichidan's certificate), with PIPELINING,
 * several transactions per connection, the null sender, many recipients, RSET and QUIT. Only
 * clients of the trusted networks or of a tenant's networks may use it (the tenant is the
 * sending MSA's, by its address; `_relay` for a trusted network no tenant claims).
 * Each accepted connection's original destination is read from its socket (proxy-origdst.ts);
 * a connection that was not redirected, or whose destination is one of Ichidan's own
 * listeners, is refused with 554 5.4.6 (a loop). The destination side is a ProxySession.
 * Nothing a client sends may end the process: every handler runs under a guard, and an
 * unexpected error in one session is logged and closes that session's two connections (421 4.3.0
 * to the client when it can still be said), never the others'.
 * Per connection (ingress/ingress-connections.ts, as on the MX and submission listeners): the deadlines bytes
 * do not reset (a command line, DATA's minimum rate: 421 4.4.2) for every client, and the
 * per-address counts (421 4.7.0 at connect, 450 4.7.1 at MAIL FROM) for clients outside
 * `limits.client.exceptions`, which by default holds the trusted and tenants' networks, so the
 * proxy's own clients are counted only when the exceptions are set. Data that breaks off (a
 * deadline, the client gone) never gets the final dot toward the destination: streamed data's
 * destination connection is dropped; a scanned message's destination transaction is reset.
 * Network: the listener; TCP/TLS to the original destinations; the events webhook.
 * Settings: listeners[] with role proxy, proxy.*, delivery.* (timeouts, TLS, transcripts),
 * limits.commandDeadline, limits.minDataRate, limits.client.*.
 */
import type { Socket } from 'node:net';
import { networkInterfaces } from 'node:os';
import { Transform, type Readable } from 'node:stream';
import type { Logger } from 'pino';
import type { SMTPServerOptions, SMTPServerSession } from 'smtp-server';
import type { Config, ListenerConfig } from '../mta-config-schema.js';
import type { IngressEvents } from '../mta-metrics-traffic.js';
import { ConnectionTable, WatchedServer } from '../ingress/ingress-connections.js';
import type { Policy } from '../ingress/ingress-policy.js';
import { mailFromRefusal, rcptToRefusal } from '../ingress/ingress-envelope.js';
import { destinationIsSelf, proxyNotAllowed, REPLIES, toSmtpError, type SmtpReply } from '../../base/base-reply.js';
import type { OriginalDstReader } from './proxy-origdst.js';
import { outcomeOf, ProxyEvents } from './proxy-events.js';
import { ClientTaps, type ParserOwner } from './proxy-client-tap.js';
import { ProxySession, REFUSED_BY_PROXY, type Recipient } from './proxy-session.js';
import { handedOver, type AddressParse } from './proxy-lookahead.js';
import { domainOf } from './proxy-params.js';
import type { Destination, ProxyDeps } from './proxy-destination.js';
import { toReply, xtext, type Reply } from '../../delivery/smtp/smtp-wire.js';

/** ESMTP parameter values go back on as xtext (RFC 3461): what smtp-server decoded is encoded again. */
export { xtext };

export interface ScanInput {
  tenant: string;
  client: string;
  helo: string;
  sender: string;
  recipients: string[];
  stream: Readable;
  listener: string;
}

/** What scanning decided: an answer for the client (refused, or held in quarantine), or the message to relay. */
export type ScanOutcome =
  | { kind: 'answer' | 'held'; reply: Reply }
  | { kind: 'relay'; open: () => Readable; done: () => Promise<void> };

export interface ProxyListenerDeps {
  /** The scanning step for a tenant whose proxied mail is scanned; null: streamed through unscanned. */
  scanner: (tenant: string) => ((input: ScanInput) => Promise<ScanOutcome>) | null;
  config: () => Config;
  /** The current relay policy: whose addresses are exempt from the per-address limits by default. */
  policy: () => Policy;
  /** The tenant of a client allowed to use the proxy; undefined: not allowed. */
  tenantOf: (address: string) => string | undefined;
  /** A recipient on the tenant's suppression list: its refusal (ingress/ingress-suppression.ts), or null. */
  suppressed?: (tenant: string, address: string) => SmtpReply | null;
  session: (config: Config) => ProxyDeps;
  /** Addresses and ports Ichidan listens on: a destination among them is a loop. */
  ownEndpoints: () => Array<{ address: string; port: number }>;
  /** The proxy's own open destination connections ("address|port"): a client among them is a loop. */
  outbound: Set<string>;
  reader: OriginalDstReader;
  /** A bare CR or LF finder for the data of unscanned messages (queue/accept/accept-receive.ts's LineEndingGuard). */
  lineGuard: () => { feed(chunk: Buffer): void; finish(): void; bare: boolean };
  tls: { key: string | Buffer; cert: string | Buffer };
  log: Logger;
  /** Connections, transactions and messages, told to the metrics as the other listeners' are (mta-metrics-traffic.ts). */
  events?: IngressEvents;
}

/** smtp-server's callback; a Reply (or an error's `relayed`) goes to the client as it came (its patch). */
type Callback = (err?: Error | null, message?: string | Reply) => void;

/** The destination's own reply (or the session's in its stead), passed to smtp-server to say as it came. */
function relayedError(reply: Reply): Error {
  return Object.assign(new Error(reply.lines.join(' ')), { responseCode: reply.code, relayed: reply });
}

/** smtp-server's parsed ESMTP parameters back into "KEY=VALUE" words. */
function paramWords(args: unknown): string[] {
  if (!args || typeof args !== 'object') return [];
  return Object.entries(args as Record<string, unknown>).map(([k, v]) => (v === true || v === undefined ? k.toUpperCase() : `${k.toUpperCase()}=${xtext(String(v))}`));
}

const unmapped = (a: string) => a.replace(/^::ffff:(\d+\.\d+\.\d+\.\d+)$/i, '$1');
/** A client connection's key ("address|port"), as its socket gave it at accept. */
const connectionKey = (session: SMTPServerSession) => `${unmapped(session.remoteAddress ?? '')}|${session.remotePort}`;
/** The same key, from the accepted socket itself. */
const socketKey = (socket: Socket) => `${unmapped(socket.remoteAddress ?? '')}|${socket.remotePort}`;
const isWildcard = (a: string) => a === '0.0.0.0' || a === '::';

/** A reply line as said ("550 5.7.1 text"), back into its parts (the metrics name it by the catalogue). */
function replyFromLine(line: string): SmtpReply {
  const m = /^(\d{3})[ -](?:(\d\.\d{1,3}\.\d{1,3}) )?(.*)$/s.exec(line.trim());
  return m ? { code: Number(m[1]), enhanced: m[2] ?? '', text: m[3] } : { code: 0, enhanced: '', text: line };
}

/** An address of this host: a listener bound to every address listens on it. */
function isLocalAddress(address: string): boolean {
  if (/^127\./.test(address) || address === '::1') return true;
  return Object.values(networkInterfaces()).some((list) => list?.some((i) => unmapped(i.address) === address));
}

/** The client's data broke off before its final dot: for the session, data refused on the way. */
function cutOffError(err: Error): Error {
  return Object.assign(new Error(`the client's data broke off: ${err.message}`), { code: REFUSED_BY_PROXY });
}

export class ProxyListener {
  readonly server: WatchedServer;
  readonly #connections: ConnectionTable;
  readonly #destinations = new Map<string, Destination | null>();
  readonly #sessions = new Map<string, ProxySession>();
  /** The clients' TCP sockets by "address|port", to close a session that failed. */
  readonly #sockets = new Map<string, Socket>();
  readonly #events: ProxyEvents;
  /** Per client connection: the last chunk it sent, its replies held back while a command waits. */
  readonly #taps = new ClientTaps();
  /** Per session: its smtp-server connection's own RCPT TO parser, for the RCPTs read ahead. */
  readonly #parsers = new Map<string, (line: Buffer) => AddressParse>();

  constructor(readonly spec: ListenerConfig, private readonly deps: ProxyListenerDeps) {
    const config = deps.config();
    this.#events = new ProxyEvents({ eventsFile: config.proxy.eventsFile, webhook: config.proxy.webhook }, deps.log);
    this.#connections = new ConnectionTable(spec.name, () => ({ config: deps.config(), policy: deps.policy() }), deps.log);
    const options: SMTPServerOptions & { greetingDelay: number } = {
      name: config.hostname,
      banner: 'Ichidan proxy',
      secure: false,
      ...deps.tls,
      hideSTARTTLS: spec.tls === 'none',
      disabledCommands: spec.tls === 'none' ? ['AUTH', 'STARTTLS'] : ['AUTH'],
      authOptional: true,
      disableReverseLookup: true,
      size: config.limits.maxMessageSize,
      hideSize: false,
      hidePIPELINING: false,
      hide8BITMIME: false,
      hideSMTPUTF8: false,
      hideDSN: false,
      hideENHANCEDSTATUSCODES: false,
      maxClients: spec.maxClients,
      socketTimeout: config.limits.commandTimeout,
      closeTimeout: 30_000,
      greetingDelay: spec.greetingDelay,
      logger: false,
      onConnect: (session, cb) => this.#guard(session, cb, () => this.#onConnect(session, cb)),
      onSecure: (socket, session, cb) => this.#guard(session, cb, () => {
        this.#connections.secured(session.id, socket as Socket);
        this.#taps.secured(connectionKey(session), socket as Socket);
        cb();
      }),
      onMailFrom: (address, session, cb) => this.#refusedMail(this.#connections.mail(session) ?? mailFromRefusal(address), cb) || this.#run(session, cb, (s) => {
        // A transaction that ended without data (every recipient refused, or RSET) is reported now.
        this.#report(session, s);
        // A client that waits for this reply gets the destination's, when the session can name its site.
        const waits = this.#taps.endsWith(connectionKey(session), (address as { rawCommand?: Buffer }).rawCommand);
        return s.mail(address.address, paramWords(address.args).join(' '), waits);
      }),
      onRcptTo: (address, session, cb) => this.#refused(rcptToRefusal(address, session) ?? this.#suppressed(session, address.address), cb) || this.#run(session, cb, (s) => {
        const raw = (address as { rawCommand?: Buffer }).rawCommand;
        // The RCPTs the client sent right after this one go to the destination in its group.
        const after = s.readsAhead ? this.#following(session, address.address, raw) : null;
        // DATA sent along with the last of them goes too, unless the message is scanned first.
        const early = this.deps.scanner(s.tenant) === null
          && (after && after.recipients.length > 0 ? after.data : this.#taps.dataFollows(connectionKey(session), raw));
        return s.rcpt(address.address, paramWords(address.args).join(' '), early, after?.recipients ?? []);
      }),
      onData: (stream, session, cb) => this.#guard(session, cb as Callback, () => this.#onData(stream, session, cb as Callback), stream),
      onClose: (session) => this.#guard(session, null, () => this.#onClose(session)),
    };
    this.server = new WatchedServer(options);
    this.server.onConnection = (connection, socket) => {
      this.#connections.watch(connection, socket);
      this.#taps.watch(socketKey(socket), socket, connection as unknown as ParserOwner);
      const parser = connection as unknown as { _parseAddressCommand(name: string, line: Buffer): AddressParse };
      this.#parsers.set(connection.id, (line) => parser._parseAddressCommand('rcpt to', line));
    };
    this.server.on('error', (err) => deps.log.warn({ err, listener: spec.name }, 'proxy client connection error'));
    // Read before smtp-server wraps the socket: the descriptor is only on the plain TCP socket.
    this.server.server.on('connection', (socket: Socket) => {
      const key = socketKey(socket);
      try {
        this.#destinations.set(key, this.deps.reader(socket));
      } catch (err) {
        deps.log.warn({ err, client: socket.remoteAddress }, 'cannot read the original destination');
        this.#destinations.set(key, null);
      }
      this.#sockets.set(key, socket);
      socket.once('close', () => {
        this.#destinations.delete(key);
        this.#sockets.delete(key);
      });
    });
  }

  /** A reloaded config: the size advertised, the idle timeout and the name in the greeting. */
  apply(config: Config): void {
    const options = this.server.options as SMTPServerOptions;
    options.size = config.limits.maxMessageSize;
    options.socketTimeout = config.limits.commandTimeout;
    options.name = config.hostname;
  }

  listen(): Promise<{ address: string; port: number }> {
    return new Promise((resolve, reject) => {
      this.server.server.once('error', reject);
      this.server.listen(this.spec.port, this.spec.address, this.spec.backlog, () => {
        this.server.server.off('error', reject);
        const a = this.server.server.address() as { address: string; port: number };
        resolve({ address: a.address, port: a.port });
      });
    });
  }

  async close(): Promise<void> {
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
    await Promise.all([...this.#sessions.values()].map((s) => s.close()));
    await this.#events.close();
  }

  #onConnect(session: SMTPServerSession, cb: Callback): void {
    this.deps.events?.connection(this.spec.name);
    const refuse = (r: SmtpReply) => {
      this.deps.events?.connectionRefused(this.spec.name, r);
      cb(toSmtpError(r));
    };
    // Past the per-address limits a client is refused before anything else costs a lookup.
    const limited = this.#connections.admit(session);
    if (limited) return refuse(limited);
    const client = unmapped(session.remoteAddress);
    if (this.deps.outbound.has(`${client}|${session.remotePort}`)) return refuse(REPLIES.proxyLoop);
    const tenant = this.deps.tenantOf(client);
    if (tenant === undefined) return refuse(proxyNotAllowed(client));
    const destination = this.#destinations.get(`${client}|${session.remotePort}`);
    if (!destination) return refuse(REPLIES.notRedirected);
    const dst = { address: unmapped(destination.address), port: destination.port };
    const own = this.deps.ownEndpoints().some((e) => e.port === dst.port && (unmapped(e.address) === dst.address || (isWildcard(e.address) && isLocalAddress(dst.address))));
    if (own) return refuse(destinationIsSelf(`${dst.address}:${dst.port}`));
    this.#sessions.set(session.id, new ProxySession(session.id, dst, tenant, this.deps.session(this.deps.config())));
    // Each transaction is logged at info ('proxied', with the same fields): the session's start only at debug.
    this.deps.log.debug({ listener: this.spec.name, client, tenant, destination: `${dst.address}:${dst.port}` }, 'proxy session');
    cb();
  }

  /**
   * The RCPTs the client sent right after the one handed over (for `to`), in the same chunk, that
   * smtp-server will hand over next and this listener will not refuse itself, for the same domain
   * (so the same site and TLS rule), up to the first that is not; and whether DATA came right
   * after the last of them (proxy-lookahead.ts).
   */
  #following(session: SMTPServerSession, to: string, raw: Buffer | undefined): { recipients: Recipient[]; data: boolean } | null {
    const parse = this.#parsers.get(session.id);
    if (!parse) return null;
    const { lines, data } = this.#taps.rcptsAfter(connectionKey(session), raw);
    const domain = domainOf(to);
    const recipients: Recipient[] = [];
    for (const line of lines) {
      const parsed = parse(line);
      if (!handedOver(parsed) || domainOf(parsed.address) !== domain) break;
      if (rcptToRefusal(parsed, session) ?? this.#suppressed(session, parsed.address)) break;
      recipients.push({ to: parsed.address, params: paramWords(parsed.args).join(' ') });
    }
    return { recipients, data: data && recipients.length === lines.length };
  }

  /** A recipient the session's tenant has suppressed is refused here, never asked of the destination. */
  #suppressed(session: SMTPServerSession, address: string): SmtpReply | null {
    const s = this.#sessions.get(session.id);
    return s ? this.deps.suppressed?.(s.tenant, address) ?? null : null;
  }

  /** An address that is not valid UTF-8, or 8-bit without SMTPUTF8, is refused here, never passed on. */
  #refused(refusal: SmtpReply | null, cb: Callback): boolean {
    if (refusal) cb(toSmtpError(refusal));
    return refusal !== null;
  }

  /** A MAIL FROM, counted as a transaction (and as refused when it is). */
  #refusedMail(refusal: SmtpReply | null, cb: Callback): boolean {
    this.deps.events?.transaction(this.spec.name);
    if (refusal) this.deps.events?.transactionRefused(this.spec.name, refusal);
    return this.#refused(refusal, cb);
  }

  /**
   * Runs one of smtp-server's handlers for a session: a throw fails that session alone (the
   * client's data, when there is some, is drained so smtp-server is not left waiting on it).
   */
  #guard(session: SMTPServerSession, cb: Callback | null, handler: () => void, data?: NodeJS.ReadableStream): void {
    try {
      handler();
    } catch (err) {
      data?.resume();
      this.#fail(session, err, cb);
    }
  }

  /**
   * An unexpected error in one client's session: logged, 421 4.3.0 to the client when a reply is
   * still owed (smtp-server closes after a 421), the destination connection dropped, and the
   * client's socket closed: both sides of that session end, nothing else does.
   */
  #fail(session: SMTPServerSession, err: unknown, cb: Callback | null): void {
    this.deps.log.error({ err, session: session.id, client: unmapped(session.remoteAddress ?? '') }, 'proxy session failed; closing it');
    this.#sessions.get(session.id)?.abandon();
    const socket = this.#sockets.get(connectionKey(session));
    if (cb) {
      try {
        cb(toSmtpError(REPLIES.sessionFailed));
      } catch (again) {
        this.deps.log.error({ err: again, session: session.id }, 'could not answer a failed proxy session');
      }
      // The 421 closes the connection; one that does not close soon is closed here.
      if (socket) setTimeout(() => socket.destroy(), 2_000).unref();
    } else {
      socket?.destroy();
    }
  }

  #run(session: SMTPServerSession, cb: Callback, step: (s: ProxySession) => Promise<Reply>): void {
    const s = this.#sessions.get(session.id);
    // A handler for a session never opened: internal inconsistency, a bland reply to the client.
    if (!s) return cb(toSmtpError(REPLIES.localError));
    let pending: Promise<Reply>;
    try {
      pending = step(s);
    } catch (err) {
      return this.#fail(session, err, cb);
    }
    const key = connectionKey(session);
    this.#taps.hold(key);
    pending.then((reply) => {
      // The destination's own reply goes back as it came, multi-line, 251 and 252 too (smtp-server patched to take it).
      if (reply.code >= 200 && reply.code < 300) cb(null, reply);
      else cb(relayedError(reply));
    }, (err) => this.#fail(session, err, cb)).catch((err) => this.#fail(session, err, null)).finally(() => this.#taps.release(key));
  }

  #onData(stream: NodeJS.ReadableStream, session: SMTPServerSession, cb: Callback): void {
    const s = this.#sessions.get(session.id);
    if (!s) {
      stream.resume();
      return cb(toSmtpError(REPLIES.localError));
    }
    // smtp-server has sent its 354: the data rate counts until the client's final dot, not while
    // the destination or the scanner takes its time afterwards.
    this.#connections.dataStarted(session.id, stream as unknown as Readable);
    // Only the client's final dot (or the stream's end) stops it: a relay that finished early (the
    // destination refused DATA, the data was refused on the way) still reads the rest, and a
    // client trickling that rest is still held to the rate.
    const ended = () => this.#connections.dataEnded(session.id);
    stream.once('end', ended);
    stream.once('close', ended);
    const recipients = session.envelope.rcptTo.map((r) => r.address);
    const scanner = this.deps.scanner(s.tenant);
    let refusal: Reply | null = null;
    const relay = async (): Promise<Reply> => {
      if (!scanner) {
        const reply = await s.data(this.#guarded(stream as unknown as Readable, (r) => { refusal = r; }));
        return refusal ?? reply;
      }
      const mailFrom = session.envelope.mailFrom;
      let outcome: ScanOutcome;
      try {
        outcome = await scanner({
          tenant: s.tenant, client: unmapped(session.remoteAddress), helo: String(session.hostNameAppearsAs ?? ''), sender: mailFrom ? mailFrom.address : '',
          recipients, stream: stream as unknown as Readable, listener: this.spec.name,
        });
      } catch (err) {
        // The client's data broke off (a deadline, a reset): nothing went to the destination
        // past its RCPTs, and its transaction is reset. Any other failure is the session's.
        if ((stream as unknown as Readable).readableEnded) throw err;
        this.deps.log.info({ listener: this.spec.name, session: session.id, err: (err as Error).message }, 'proxied DATA not completed');
        return s.abort(toReply(REPLIES.dataTimeout));
      }
      if (outcome.kind !== 'relay') return s.abort(outcome.reply);
      try {
        return await s.data(outcome.open());
      } finally {
        await outcome.done().catch((err) => this.deps.log.error({ err }, 'could not remove a relayed message from the spool'));
      }
    };
    relay().finally(() => stream.resume()).then((reply) => {
      this.#report(session, s);
      if (reply.code >= 200 && reply.code < 300) cb(null, reply);
      else cb(relayedError(reply));
    }, (err) => {
      stream.resume();
      this.#fail(session, err, cb);
    }).catch((err) => this.#fail(session, err, null));
  }

  /**
   * The client's data as relayed: refused on the way (and the destination's transaction broken off
   * before its final dot) when it grows past the size limit or carries a bare CR or LF, with the
   * listeners' replies (REPLIES.tooBig, REPLIES.badLineEndings); the rest of the client's data is
   * read and dropped.
   */
  #guarded(stream: Readable, refuse: (r: Reply) => void): Readable {
    const max = this.deps.config().limits.maxMessageSize;
    const guard = this.deps.lineGuard();
    let bytes = 0;
    const stop = (r: SmtpReply, cb: (err: Error) => void) => {
      refuse(toReply(r));
      stream.unpipe(out);
      stream.resume();
      cb(Object.assign(new Error(`${r.enhanced} ${r.text}`), { code: REFUSED_BY_PROXY }));
    };
    const out = new Transform({
      transform(chunk: Buffer, _enc, cb) {
        bytes += chunk.length;
        guard.feed(chunk);
        if (bytes > max) return stop(REPLIES.tooBig, cb);
        if (guard.bare) return stop(REPLIES.badLineEndings, cb);
        cb(null, chunk);
      },
      flush(cb) {
        guard.finish();
        if (guard.bare) return stop(REPLIES.badLineEndings, cb);
        cb();
      },
    });
    // Input that ends without its final dot (destroyed past the data-rate deadline, the client
    // gone) is refused like bad data: the destination's connection is dropped before the dot.
    stream.on('error', (err) => out.destroy(cutOffError(err)));
    stream.on('close', () => {
      if (!stream.readableEnded) out.destroy(cutOffError(new Error('closed before the end of data')));
    });
    // A refusal can come before the destination has answered DATA, when nothing reads `out` yet:
    // its error is then only the refusal already recorded, and must not go unheard.
    out.on('error', () => undefined);
    // However the relay ends (refused, the destination gone), the client's data is read to its end,
    // or smtp-server would never see the end of it and never answer.
    out.on('close', () => {
      stream.unpipe(out);
      stream.resume();
    });
    return stream.pipe(out);
  }

  #report(session: SMTPServerSession, s: ProxySession): void {
    const summary = s.takeSummary();
    if (!summary) return;
    const outcome = outcomeOf(summary.final, summary.recipients);
    this.#events.emit({
      at: new Date().toISOString(), outcome, client: unmapped(session.remoteAddress), tenant: s.tenant,
      destination: `${s.destination.address}:${s.destination.port}`, site: s.site, source: s.source,
      sender: summary.sender, recipients: summary.recipients, msTo354: summary.msTo354, final: summary.final, bytes: summary.bytes,
    });
    this.deps.log.info({ listener: this.spec.name, client: unmapped(session.remoteAddress), tenant: s.tenant, destination: `${s.destination.address}:${s.destination.port}`, outcome, final: summary.final }, 'proxied');
    // A message is counted at the end of its data, as on the other listeners: the destination's (or
    // the scan's) final reply; a destination that broke leaves it incomplete.
    if (summary.final !== null) {
      const counted = outcome === 'delivered' ? 'accepted' : outcome === 'failed' ? 'incomplete' : 'refused';
      this.deps.events?.message(this.spec.name, s.tenant, counted, counted === 'accepted' ? null : replyFromLine(summary.final), false);
    }
  }

  #onClose(session: SMTPServerSession): void {
    this.#connections.closed(session.id);
    this.#parsers.delete(session.id);
    const s = this.#sessions.get(session.id);
    this.#sessions.delete(session.id);
    if (!s) return;
    this.#report(session, s);
    s.close().catch((err) => this.deps.log.error({ err, session: session.id }, 'could not close a proxy session\'s destination side'));
  }
}
