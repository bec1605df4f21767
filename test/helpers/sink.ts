/*
 * Sink SMTP servers for tests and benchmarks: real smtp-server instances on 127.0.0.x that record
 * every message they accept, and whose answers a caller scripts per connection, per MAIL FROM, per
 * recipient and per attempt (4xx then 2xx, 5xx, a refused DATA), so retries, bounces and throttling
 * can be driven over real sockets.
 *
 * Takes: SinkOptions (address, scripts, an optional cap on simultaneous connections per client IP,
 * an optional delay before every greeting and every MAIL, RCPT and end-of-DATA reply).
 * Gives: a Sink with the messages it accepted (each with the client's address, the connection it came
 * on and when it was accepted) and connection counts (accepted, refused by the cap, open, the peak
 * per client IP).
 */
import type { Socket } from 'node:net';
import { SMTPServer, type SMTPServerOptions } from 'smtp-server';

export interface SunkMessage {
  mailFrom: string;
  rcptTo: string[];
  data: Buffer;
  secure: boolean;
  params: Record<string, unknown>;
  rcptParams: Array<Record<string, unknown>>;
  /** The peer's IP address. */
  clientAddress: string;
  /** Which connection to this sink carried it (1-based, in order of arrival, refused ones included). */
  connection: number;
  /** Date.now() when the message was accepted, i.e. when its 250 went out. */
  at: number;
}

/** A scripted SMTP reply; the text may start with an enhanced status code. */
export interface ScriptedReply { code: number; text: string }

/** What the sink answers to RCPT TO for an address on attempt n (1-based); undefined means 250. */
export type RcptScript = (address: string, attempt: number) => ScriptedReply | undefined;

export interface Sink {
  host: string;
  port: number;
  messages: SunkMessage[];
  rcptAttempts: Map<string, number>;
  /** Connections greeted with 220. */
  readonly connections: number;
  /** Connections refused at the banner by maxConnectionsPerClient. */
  readonly refused: number;
  /** The most connections one client IP held open at the same time. */
  readonly peakConnections: number;
  /** Connections open now, all clients together. */
  readonly open: number;
  waitFor(count: number, timeoutMs?: number): Promise<SunkMessage[]>;
  close(): Promise<void>;
}

export interface SinkOptions {
  host?: string;
  port?: number;
  rcpt?: RcptScript;
  data?: (attempt: number) => ScriptedReply | undefined;
  /** The answer at the banner for the n-th connection (1-based, all clients); undefined means 220. */
  connect?: (clientIp: string, n: number) => ScriptedReply | undefined;
  /** The answer to the n-th MAIL FROM (1-based, all connections); undefined means 250. */
  mail?: (clientIp: string, n: number) => ScriptedReply | undefined;
  /** A client IP already holding this many open connections gets 421 at the banner for the next one. */
  maxConnectionsPerClient?: number;
  /** A tarpit: milliseconds before the greeting and before every MAIL, RCPT and end-of-DATA reply. */
  replyDelay?: number;
  lmtp?: boolean;
  /** LMTP only: the DATA answer for each recipient (undefined = 250). */
  lmtpData?: (address: string, attempt: number) => ScriptedReply | undefined;
  /** Advertised SIZE limit. */
  size?: number;
  /** PEM key and certificate offered after STARTTLS (default: smtp-server's built-in self-signed pair). */
  key?: string;
  cert?: string;
  /** Neither offer nor accept STARTTLS. */
  hideStartTls?: boolean;
}

function replyError(r: ScriptedReply): Error & { responseCode: number } {
  return Object.assign(new Error(r.text), { responseCode: r.code });
}

export async function startSink(opts: SinkOptions = {}): Promise<Sink> {
  const host = opts.host ?? '127.0.0.1';
  const delay = opts.replyDelay ?? 0;
  const messages: SunkMessage[] = [];
  const rcptAttempts = new Map<string, number>();
  let dataAttempts = 0;
  let mailCount = 0;
  let arrivals = 0;
  let connections = 0;
  let refused = 0;
  let peakConnections = 0;
  const openByClient = new Map<string, number>();
  const connectionOf = new Map<string, number>();
  /** Accepted sockets by peer address and port, until their connection reaches the banner. */
  const sockets = new Map<string, Socket>();
  const waiters: Array<() => void> = [];
  const later = (answer: () => void): void => {
    if (delay > 0) setTimeout(answer, delay);
    else answer();
  };

  /** Frees a connection's slot; by session id, for as long as the slot is held. */
  const releases = new Map<string, () => void>();
  // The first FIN either way frees the slot, not the later 'close': the connection is over for
  // the client once it sees our FIN after QUIT (or sent its own), and a client that then opens
  // the next one at once must not be refused for the one it just ended.
  const releaseOnEnd = (socket: Socket, release: () => void): void => {
    socket.once('end', release);
    socket.once('finish', release);
    socket.once('close', release);
  };

  /** Holds a slot for the client until its connection ends. */
  const holdSlot = (sessionId: string, ip: string, socket: Socket): void => {
    const n = (openByClient.get(ip) ?? 0) + 1;
    openByClient.set(ip, n);
    peakConnections = Math.max(peakConnections, n);
    connections++;
    const release = (): void => {
      if (!releases.delete(sessionId)) return;
      const left = (openByClient.get(ip) ?? 1) - 1;
      if (left > 0) openByClient.set(ip, left);
      else openByClient.delete(ip);
    };
    releases.set(sessionId, release);
    releaseOnEnd(socket, release);
  };

  const options: SMTPServerOptions & { greetingDelay: number } = {
    disableReverseLookup: true,
    authOptional: true,
    hideENHANCEDSTATUSCODES: false,
    hideDSN: false,
    lmtp: opts.lmtp ?? false,
    size: opts.size,
    logger: false,
    greetingDelay: delay,
    ...(opts.key && opts.cert ? { key: opts.key, cert: opts.cert } : {}),
    ...(opts.hideStartTls ? { hideSTARTTLS: true, disabledCommands: ['STARTTLS'] } : {}),
    onConnect(session, cb) {
      const n = ++arrivals;
      connectionOf.set(session.id, n);
      // Decided on the next turn, once the FINs that arrived with this connection have been read.
      setImmediate(() => {
        const ip = session.remoteAddress;
        const scripted = opts.connect?.(ip, n);
        if (scripted) return cb(replyError(scripted));
        if (opts.maxConnectionsPerClient !== undefined && (openByClient.get(ip) ?? 0) >= opts.maxConnectionsPerClient) {
          refused++;
          return cb(replyError({ code: 421, text: `4.7.0 too many connections from ${ip}` }));
        }
        const key = `${ip}:${session.remotePort}`;
        const socket = sockets.get(key);
        sockets.delete(key);
        if (socket && !socket.destroyed) holdSlot(session.id, ip, socket);
        cb();
      });
    },
    onSecure(socket, session, cb) {
      // STARTTLS strips every listener off the plain socket: the TLS socket now carries the end.
      const release = releases.get(session.id);
      if (release) releaseOnEnd(socket as Socket, release);
      cb();
    },
    onClose(session) {
      releases.get(session.id)?.();
      connectionOf.delete(session.id);
    },
    onMailFrom(_address, session, cb) {
      const r = opts.mail?.(session.remoteAddress, ++mailCount);
      later(() => cb(r ? replyError(r) : null));
    },
    onRcptTo(address, _session, cb) {
      const n = (rcptAttempts.get(address.address) ?? 0) + 1;
      rcptAttempts.set(address.address, n);
      const r = opts.rcpt?.(address.address, n);
      later(() => cb(r ? replyError(r) : null));
    },
    onData(stream, session, cb) {
      const chunks: Buffer[] = [];
      stream.on('data', (c: Buffer) => chunks.push(c));
      stream.on('end', () => later(() => {
        dataAttempts++;
        const perRecipient: Array<string | Error> = [];
        const r = opts.data?.(dataAttempts);
        if (r) return cb(replyError(r));
        const delivered = session.envelope.rcptTo.filter((r) => {
          const answer = opts.lmtpData?.(r.address, dataAttempts);
          perRecipient.push(answer ? replyError(answer) : `2.0.0 <${r.address}> delivered`);
          return !answer;
        });
        messages.push({
          mailFrom: session.envelope.mailFrom ? session.envelope.mailFrom.address : '',
          rcptTo: delivered.map((r) => r.address),
          data: Buffer.concat(chunks),
          secure: session.secure,
          params: (session.envelope.mailFrom && session.envelope.mailFrom.args) || {},
          rcptParams: session.envelope.rcptTo.map((r) => (r.args || {}) as Record<string, unknown>),
          clientAddress: session.remoteAddress,
          connection: connectionOf.get(session.id) ?? 0,
          at: Date.now(),
        });
        for (const w of waiters.splice(0)) w();
        if (opts.lmtp) return cb(null, perRecipient as never);
        cb(null, 'Ok: sunk');
      }));
    },
  };
  const server = new SMTPServer(options);
  // Ahead of smtp-server's own listener, which may reach onConnect before returning.
  server.server.prependListener('connection', (socket: Socket) => {
    const key = `${socket.remoteAddress}:${socket.remotePort}`;
    sockets.set(key, socket);
    socket.once('close', () => sockets.delete(key));
  });
  // Peers that die mid-session (the crash test kills Ichidan) reset connections: expected here.
  server.on('error', () => undefined);
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.port ?? 0, host, () => resolve());
  });
  const port = (server.server.address() as { port: number }).port;
  return {
    host, port, messages, rcptAttempts,
    get connections() { return connections; },
    get refused() { return refused; },
    get peakConnections() { return peakConnections; },
    get open() { return [...openByClient.values()].reduce((a, b) => a + b, 0); },
    async waitFor(count, timeoutMs = 20_000) {
      const until = Date.now() + timeoutMs;
      while (messages.length < count) {
        if (Date.now() > until) throw new Error(`sink ${host}:${port} got ${messages.length} of ${count} messages`);
        await new Promise<void>((r) => { waiters.push(r); setTimeout(r, 100); });
      }
      return messages;
    },
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}
