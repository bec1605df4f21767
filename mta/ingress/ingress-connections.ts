/*
 * One listener's open connections, from the socket's arrival to its close: the per-address
 * counts (ingress-anvil.ts), the deadlines bytes do not reset (ingress-deadline.ts) and the AUTH failures
 * of each session.
 *
 * Takes: smtp-server's connection objects and sockets (through `WatchedServer`, which also lets a
 * listener's PROXY door read the header of a load balancer's connections), session ids from
 * the listener's callbacks, the current snapshot's config and policy. Gives: the refusals at connect
 * (421 4.7.0) and MAIL FROM (450 4.7.1), and ends a connection past a deadline with 421 4.4.2 (the
 * DATA stream being read is destroyed first, so the transaction ends too). Every entry is removed
 * when smtp-server reports the session closed, and an AUTH answer still held back is dropped.
 * Settings: limits.client.*, limits.commandDeadline, limits.minDataRate.
 */
import { randomBytes } from 'node:crypto';
import type { Socket } from 'node:net';
import type { Readable } from 'node:stream';
import type { Logger } from 'pino';
import { SMTPServer, type SMTPServerSession } from 'smtp-server';
import { Anvil, clientKey, isExempt } from './ingress-anvil.js';
import type { Config } from '../mta-config-schema.js';
import { SlowClientGuard, type DeadlineBreach } from './ingress-deadline.js';
import type { Policy } from './ingress-policy.js';
import type { ProxyDoor } from './ingress-proxy-door.js';
import { REPLIES, replyLine, replyText, type SmtpReply } from '../../base/base-reply.js';

/** What smtp-server's connection object offers that the guards need. */
export interface Connection {
  id: string;
  send(code: number, text: string): void;
  close(): void;
}

/** A session id as smtp-server makes them (80 random bits, base 32). */
function sessionId(): string {
  return BigInt(`0x${randomBytes(10).toString('hex')}`).toString(32).padStart(16, '0');
}

/**
 * smtp-server, telling its owner about each connection it creates, with the socket it reads; with a
 * `door`, connections from a load balancer begin with a PROXY header (ingress-proxy-door.ts). With
 * `early`, each connection is judged before smtp-server builds anything for it (its session id is
 * made here and kept): one refused there gets its reply line and is closed at once — no session
 * object, no reverse lookup, no greeting timer — so a flood refused at the door costs little and the
 * kernel's accept queue drains fast.
 */
export class WatchedServer extends SMTPServer {
  onConnection: (connection: Connection, socket: Socket) => void = () => undefined;
  door: ProxyDoor | null = null;
  /** The decision before anything is built: a reply refuses the connection (`id` is its session id, if it goes on). */
  early: ((id: string, remoteAddress: string) => SmtpReply | null) | null = null;
  /** A connection `early` refused, once its reply is on its way. */
  refusedEarly: (id: string) => void = () => undefined;

  override connect(...args: Parameters<SMTPServer['connect']>): void {
    if (this.early) {
      const [socket, options] = args as unknown as [Socket, { id?: string; remoteAddress?: string } | undefined];
      const id = options?.id ?? sessionId();
      const refusal = this.early(id, plainAddress(options?.remoteAddress || socket.remoteAddress || ''));
      if (refusal) {
        refuseAtSocket(socket, replyLine(refusal));
        this.refusedEarly(id);
        return;
      }
      (args as unknown[])[1] = { ...options, id };
    }
    super.connect(...args);
    // The connection made for this socket; none when it was refused and closed at once (onConnect
    // may answer before connect returns), and then no other session may be taken for it.
    let created: Connection | undefined;
    for (const c of this.connections as unknown as Set<Connection & { _socket?: Socket }>) if (c._socket === args[0]) created = c;
    if (!created) return;
    this.door?.guard(created as Connection & { remoteAddress: string }, args[0]);
    this.onConnection(created, args[0]);
  }

  override _expectsProxyHeader(socket: Socket): boolean {
    return this.door ? this.door.expects(socket.remoteAddress) : super._expectsProxyHeader(socket);
  }

  override _handleProxy(...args: Parameters<SMTPServer['_handleProxy']>): void {
    const [socket, done] = args;
    if (this.door?.expects(socket.remoteAddress)) return this.door.read(socket, done);
    super._handleProxy(...args);
  }
}

/** A client address as smtp-server gives it to the session: IPv4-mapped IPv6 as plain IPv4, lower case. */
function plainAddress(address: string): string {
  return address.trim().replace(/^::ffff:(?=\d+\.\d+\.\d+\.\d+$)/i, '').toLowerCase();
}

/**
 * One reply line and the connection closed: what the client sends meanwhile is read and dropped, and a
 * client that does not close its side within 10 s is cut off.
 */
function refuseAtSocket(socket: Socket, line: string): void {
  socket.on('error', () => undefined);
  socket.setTimeout(10_000, () => socket.destroy());
  socket.resume();
  socket.end(`${line}\r\n`);
}

interface ConnectionState {
  connection: Connection;
  guard: SlowClientGuard;
  authFailures: number;
  /** The DATA stream being read, destroyed when its deadline passes. */
  data: Readable | null;
  /** An AUTH answer held back by its penalty, dropped if the client leaves first. */
  penalty: NodeJS.Timeout | null;
}

export class ConnectionTable {
  readonly #open = new Map<string, ConnectionState>();
  readonly #anvil = new Anvil();
  /** Sessions the anvil counts (admitted, not exempt), with the key to give back at close (the prefix may be reloaded meanwhile). */
  readonly #counted = new Map<string, string>();

  constructor(
    private readonly listener: string,
    private readonly snapshot: () => { config: Config; policy: Policy },
    private readonly log: Logger,
  ) {}

  /** A socket smtp-server has just wrapped: its deadlines start now, before the greeting. */
  watch(connection: Connection, socket: Socket): void {
    const guard = new SlowClientGuard(() => this.snapshot().config.limits, (breach) => this.#breach(connection, breach));
    this.#open.set(connection.id, { connection, guard, authFailures: 0, data: null, penalty: null });
    guard.watch(socket);
  }

  /** After STARTTLS the deadlines watch the decrypted bytes. */
  secured(sessionId: string, socket: Socket): void {
    this.#open.get(sessionId)?.guard.watch(socket);
  }

  exempt(address: string): boolean {
    const { config, policy } = this.snapshot();
    return isExempt(address, config, policy);
  }

  /** The per-address limits at connect: null to greet the client, else the 421. */
  admit(session: SMTPServerSession): SmtpReply | null {
    if (this.exempt(session.remoteAddress)) return null;
    const limits = this.snapshot().config.limits.client;
    const key = clientKey(session.remoteAddress, limits.ipv6Prefix);
    const refusal = this.#anvil.connect(key, limits);
    if (refusal) {
      this.log.info({ listener: this.listener, client: session.remoteAddress, reply: `${refusal.code} ${refusal.enhanced}` }, 'connection refused: per-client limit');
      return refusal;
    }
    this.#counted.set(session.id, key);
    return null;
  }

  /** The message rate at MAIL FROM: null to go on, else the 450. */
  mail(session: SMTPServerSession): SmtpReply | null {
    if (this.exempt(session.remoteAddress)) return null;
    const limits = this.snapshot().config.limits.client;
    return this.#anvil.mail(clientKey(session.remoteAddress, limits.ipv6Prefix), limits);
  }

  authFailures(sessionId: string): number {
    return this.#open.get(sessionId)?.authFailures ?? 0;
  }

  authFailed(sessionId: string): void {
    const state = this.#open.get(sessionId);
    if (state) state.authFailures++;
  }

  /** Gives an AUTH answer after `delayMs`, unless the session closes first. */
  answerLater(sessionId: string, delayMs: number, answer: () => void): void {
    const state = this.#open.get(sessionId);
    if (!state) return;
    if (delayMs <= 0) return answer();
    state.penalty = setTimeout(() => {
      state.penalty = null;
      answer();
    }, delayMs);
    state.penalty.unref();
  }

  /** The 354 went out and `stream` carries the data: the data rate counts from now. */
  dataStarted(sessionId: string, stream: Readable): void {
    const state = this.#open.get(sessionId);
    if (!state) return;
    state.data = stream;
    state.guard.dataStarted();
  }

  dataEnded(sessionId: string): void {
    const state = this.#open.get(sessionId);
    if (!state) return;
    state.data = null;
    state.guard.dataEnded();
  }

  closed(sessionId: string): void {
    const counted = this.#counted.get(sessionId);
    if (counted !== undefined) {
      this.#counted.delete(sessionId);
      this.#anvil.disconnect(counted);
    }
    const state = this.#open.get(sessionId);
    if (state?.penalty) clearTimeout(state.penalty);
    state?.guard.stop();
    this.#open.delete(sessionId);
  }

  #breach(connection: Connection, breach: DeadlineBreach): void {
    const r = breach === 'data' ? REPLIES.dataTooSlow : REPLIES.commandDeadline;
    this.log.info({ listener: this.listener, session: connection.id, breach }, breach === 'data' ? 'message data too slow' : 'command line not complete in time');
    const data = this.#open.get(connection.id)?.data;
    // The breach may come before the DATA handler reads the stream: its error must have a listener.
    data?.once('error', () => undefined);
    data?.destroy(new Error('DATA too slow'));
    connection.send(r.code, replyText(r));
    connection.close();
  }
}
