/*
 * A listener behind a TCP load balancer: which peers must begin with a PROXY protocol header, and
 * what becomes of a connection whose header is missing, bad, or sent by someone else.
 *
 * Takes: the listener's `proxyProtocol` settings in force (`from`, `version`, `timeout`; a reload
 *   applies to new connections), the accepted sockets of its smtp-server (through WatchedServer,
 *   ingress-connections.ts) and, after the greeting, the command lines of its sessions.
 * Gives: for a socket from `from`, the client's address and port out of the header
 *   (ingress-proxy-header.ts), which smtp-server then gives the session as its remote address, so
 *   policy, tenants, per-client limits, the admission, SPF, the Received field and the logs all see
 *   the client. A socket from `from` that sends no whole header in time, or a malformed or
 *   oversized one, gets `421 4.7.0` and is closed (as Postfix's smtpd_upstream_proxy_protocol).
 *   A session whose client sends a PROXY header after the greeting (anyone not in `from`, or a
 *   second header through the balancer), v1 or v2, gets `554 5.7.1` and is closed.
 * Settings: listeners[].proxyProtocol.
 */
import { randomBytes } from 'node:crypto';
import type { BlockList, Socket } from 'node:net';
import type { Logger } from 'pino';
import { proxyHeaderNotAllowed, proxyHeaderRefused, replyText } from '../../base/base-reply.js';
import type { ListenerConfig } from '../mta-config-schema.js';
import { blockListOf, inList } from './ingress-policy.js';
import { isV2Start, readProxyHeader } from './ingress-proxy-header.js';

type ProxySettings = NonNullable<ListenerConfig['proxyProtocol']>;

/** What smtp-server hands the connection it then makes (its SocketOptions). */
export interface ProxiedSocket {
  id: string;
  remoteAddress?: string;
  remotePort?: number;
}

/** The parts of smtp-server's connection object a forged header needs. */
interface SessionConnection {
  id: string;
  remoteAddress: string;
  send(code: number, text: string): void;
  close(): void;
}

/** smtp-server's session id: 80 random bits in base 32. */
const sessionId = () => BigInt('0x' + randomBytes(10).toString('hex')).toString(32).padStart(16, '0');

export class ProxyDoor {
  readonly #lists = new WeakMap<ProxySettings, BlockList>();

  constructor(
    private readonly listener: string,
    private readonly hostname: () => string,
    /** The listener's settings in force; undefined: no load balancer in front. */
    private readonly settings: () => ProxySettings | undefined,
    private readonly log: Logger,
  ) {}

  /** Whether a connection from `peer` must begin with a PROXY header. */
  expects(peer: string | undefined): boolean {
    const s = this.settings();
    if (!s || !peer) return false;
    let list = this.#lists.get(s);
    if (!list) this.#lists.set(s, list = blockListOf(s.from));
    return inList(list, peer);
  }

  /**
   * Reads the header of a socket `expects` said yes to, then calls `done` with the client's
   * address for the session, or with an error once the socket is answered and closing.
   */
  read(socket: Socket, done: (err: Error | null, options?: ProxiedSocket) => void): void {
    const s = this.settings();
    const peer = socket.remoteAddress ?? '';
    // From here to the session's own handlers, an error on the socket is only a closed connection.
    socket.on('error', () => undefined);
    if (!s) return done(null, { id: sessionId() });
    void readProxyHeader(socket, s.version, s.timeout).then((outcome) => {
      if (!outcome.ok) {
        // A balancer's TCP health check connects and leaves: no warning every few seconds.
        this.log[outcome.empty ? 'debug' : 'warn']({ listener: this.listener, peer, reason: outcome.why }, 'PROXY header refused: connection closed');
        if (!socket.destroyed && socket.writable) {
          const r = proxyHeaderRefused();
          socket.end(`${r.code} ${replyText(r).replace(/^(\S+) /, `$1 ${this.hostname()} `)}\r\n`);
        }
        setTimeout(() => socket.destroy(), 1000).unref();
        return done(new Error(outcome.why));
      }
      const source = outcome.header.source;
      this.log.debug({ listener: this.listener, peer, client: source?.address ?? peer, version: outcome.header.version }, 'PROXY header');
      done(null, { id: sessionId(), ...(source ? { remoteAddress: source.address, remotePort: source.port } : {}) });
    });
  }

  /**
   * A header after the greeting, on a listener behind a balancer: a forged one (a client not in
   * `from`) or a repeated one (through the balancer). A v1 line arrives as a PROXY command; a v2
   * header is caught in the first bytes of `socket`, before the parser reads its lines.
   */
  guard(connection: SessionConnection, socket: Socket): void {
    const refuse = () => {
      this.log.warn({ listener: this.listener, client: connection.remoteAddress, session: connection.id }, 'PROXY header from a client not allowed to send one: connection closed');
      const r = proxyHeaderNotAllowed(connection.remoteAddress);
      connection.send(r.code, replyText(r));
      // Closing stops the parser: the rest of this chunk is not read as commands.
      connection.close();
    };
    socket.prependOnceListener('data', (chunk: Buffer) => {
      if (this.settings() && isV2Start(chunk)) refuse();
    });
    Object.assign(connection, {
      handler_PROXY: (_command: Buffer, next: () => void) => {
        if (!this.settings()) {
          connection.send(500, '5.5.2 Error: command not recognized');
          return next();
        }
        refuse();
      },
    });
  }
}
