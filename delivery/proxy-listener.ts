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
 * Network: the listener; TCP/TLS to the original destinations; the events webhook.
 * Settings: listeners[] with role proxy, proxy.*, delivery.* (timeouts, TLS, transcripts).
 */
import type { Socket } from 'node:net';
import type { Readable } from 'node:stream';
import type { Logger } from 'pino';
import { SMTPServer, type SMTPServerOptions, type SMTPServerSession } from 'smtp-server';
import type { Config, ListenerConfig } from '../mta/mta-config-schema.js';
import type { OriginalDstReader } from './proxy-origdst.js';
import { outcomeOf, ProxyEvents } from './proxy-events.js';
import { ProxySession, type Destination, type ProxyDeps } from './proxy-session.js';
import type { Reply } from './proxy-client.js';

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
  /** The tenant of a client allowed to use the proxy; undefined: not allowed. */
  tenantOf: (address: string) => string | undefined;
  session: (config: Config) => ProxyDeps;
  /** Addresses and ports Ichidan listens on: a destination among them is a loop. */
  ownEndpoints: () => Array<{ address: string; port: number }>;
  /** The proxy's own open destination connections ("address|port"): a client among them is a loop. */
  outbound: Set<string>;
  reader: OriginalDstReader;
  tls: { key: string | Buffer; cert: string | Buffer };
  log: Logger;
}

type Callback = (err?: Error | null, message?: string) => void;

function smtpError(reply: Reply): Error {
  return Object.assign(new Error(reply.lines.join(' ')), { responseCode: reply.code });
}

/** smtp-server's parsed ESMTP parameters back into "KEY=VALUE" words. */
function paramWords(args: unknown): string[] {
  if (!args || typeof args !== 'object') return [];
  return Object.entries(args as Record<string, unknown>).map(([k, v]) => (v === true || v === undefined ? k.toUpperCase() : `${k.toUpperCase()}=${String(v)}`));
}

const unmapped = (a: string) => a.replace(/^::ffff:(\d+\.\d+\.\d+\.\d+)$/i, '$1');

export class ProxyListener {
  readonly server: SMTPServer;
  readonly #destinations = new Map<string, Destination | null>();
  readonly #sessions = new Map<string, ProxySession>();
  readonly #events: ProxyEvents;

  constructor(readonly spec: ListenerConfig, private readonly deps: ProxyListenerDeps) {
    const config = deps.config();
    this.#events = new ProxyEvents({ eventsFile: config.proxy.eventsFile, webhook: config.proxy.webhook }, deps.log);
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
      onConnect: (session, cb) => this.#onConnect(session, cb),
      onMailFrom: (address, session, cb) => this.#run(session, cb, (s) => {
        // A transaction that ended without data (every recipient refused, or RSET) is reported now.
        this.#report(session, s);
        return s.mail(address.address, paramWords(address.args).join(' '));
      }),
      onRcptTo: (address, session, cb) => this.#run(session, cb, (s) => s.rcpt(address.address, paramWords(address.args).join(' '))),
      onData: (stream, session, cb) => this.#onData(stream, session, cb),
      onClose: (session) => this.#onClose(session),
    };
    this.server = new SMTPServer(options);
    this.server.on('error', (err) => deps.log.warn({ err, listener: spec.name }, 'proxy client connection error'));
    // Read before smtp-server wraps the socket: the descriptor is only on the plain TCP socket.
    this.server.server.on('connection', (socket: Socket) => {
      const key = `${unmapped(socket.remoteAddress ?? '')}|${socket.remotePort}`;
      try {
        this.#destinations.set(key, this.deps.reader(socket));
      } catch (err) {
        deps.log.warn({ err, client: socket.remoteAddress }, 'cannot read the original destination');
        this.#destinations.set(key, null);
      }
      socket.once('close', () => this.#destinations.delete(key));
    });
  }

  listen(): Promise<{ address: string; port: number }> {
    return new Promise((resolve, reject) => {
      this.server.server.once('error', reject);
      this.server.listen(this.spec.port, this.spec.address, () => {
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
    const client = unmapped(session.remoteAddress);
    const refuse = (code: number, text: string) => cb(Object.assign(new Error(text), { responseCode: code }));
    if (this.deps.outbound.has(`${client}|${session.remotePort}`)) return refuse(554, '5.4.6 routing loop: this connection comes from the proxy itself');
    const tenant = this.deps.tenantOf(client);
    if (tenant === undefined) return refuse(554, `5.7.1 ${client} may not use this proxy`);
    const destination = this.#destinations.get(`${client}|${session.remotePort}`);
    if (!destination) return refuse(554, '5.4.6 no original destination: this connection was not redirected to the proxy');
    const dst = { address: unmapped(destination.address), port: destination.port };
    const own = this.deps.ownEndpoints().some((e) => e.port === dst.port && (unmapped(e.address) === dst.address || e.address === '0.0.0.0' || e.address === '::'));
    if (own) return refuse(554, `5.4.6 routing loop: ${dst.address}:${dst.port} is this MTA`);
    this.#sessions.set(session.id, new ProxySession(session.id, dst, tenant, this.deps.session(this.deps.config())));
    this.deps.log.info({ listener: this.spec.name, client, tenant, destination: `${dst.address}:${dst.port}` }, 'proxy session');
    cb();
  }

  #run(session: SMTPServerSession, cb: Callback, step: (s: ProxySession) => Promise<Reply>): void {
    const s = this.#sessions.get(session.id);
    if (!s) return cb(Object.assign(new Error('4.3.0 no proxy session'), { responseCode: 451 }));
    step(s).then((reply) => {
      // The destination's own text goes back with its 250 (smtp-server patched to take it).
      if (reply.code >= 200 && reply.code < 300) cb(null, reply.lines.join(' '));
      else cb(smtpError(reply));
    }, (err) => {
      this.deps.log.error({ err }, 'proxy step failed');
      cb(Object.assign(new Error('4.3.0 proxy error'), { responseCode: 451 }));
    });
  }

  #onData(stream: NodeJS.ReadableStream, session: SMTPServerSession, cb: Callback): void {
    const s = this.#sessions.get(session.id);
    if (!s) {
      stream.resume();
      return cb(Object.assign(new Error('4.3.0 no proxy session'), { responseCode: 451 }));
    }
    const recipients = session.envelope.rcptTo.map((r) => r.address);
    const scanner = this.deps.scanner(s.tenant);
    const relay = async (): Promise<Reply> => {
      if (!scanner) return s.data(stream as unknown as Readable);
      const mailFrom = session.envelope.mailFrom;
      const outcome = await scanner({
        tenant: s.tenant, client: unmapped(session.remoteAddress), helo: String(session.hostNameAppearsAs ?? ''), sender: mailFrom ? mailFrom.address : '',
        recipients, stream: stream as unknown as Readable, listener: this.spec.name,
      });
      if (outcome.kind !== 'relay') return s.abort(outcome.reply);
      try {
        return await s.data(outcome.open());
      } finally {
        await outcome.done().catch((err) => this.deps.log.error({ err }, 'could not remove a relayed message from the spool'));
      }
    };
    relay().then((reply) => {
      this.#report(session, s);
      // smtp-server refuses the transaction itself when the data was larger than SIZE allows.
      if ((stream as unknown as { sizeExceeded?: boolean }).sizeExceeded) return cb(Object.assign(new Error('5.3.4 message too big'), { responseCode: 552 }));
      if (reply.code >= 200 && reply.code < 300) cb(null, reply.lines.join(' '));
      else cb(smtpError(reply));
    }, (err) => {
      this.deps.log.error({ err }, 'proxy data failed');
      cb(Object.assign(new Error('4.3.0 proxy error'), { responseCode: 451 }));
    });
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
    this.deps.log.info({ listener: this.spec.name, tenant: s.tenant, destination: `${s.destination.address}:${s.destination.port}`, outcome, final: summary.final }, 'proxied');
  }

  #onClose(session: SMTPServerSession): void {
    const s = this.#sessions.get(session.id);
    this.#sessions.delete(session.id);
    if (!s) return;
    this.#report(session, s);
    void s.close();
  }
}
