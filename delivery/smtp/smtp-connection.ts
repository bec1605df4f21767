/*
 * One outbound SMTP/LMTP connection, command by command: the client both queued delivery
 * (delivery-smtp.ts) and the transparent proxy (mta/proxy/proxy-session.ts) speak through.
 *
 * The proxy relays a live session, so each MAIL, RCPT and DATA goes out when its client sends it;
 * queued delivery sends a whole envelope, pipelined when the server offers PIPELINING. Both need
 * the same calls: connect (and read the greeting), the handshake (EHLO, or LHLO for LMTP, HELO
 * when EHLO is refused, STARTTLS as asked), any command line, a pipelined batch of commands, DATA
 * with a streamed, dot-stuffed body and the reply (or, for LMTP, the replies) after the final dot,
 * QUIT. Every reply is read whole (multi-line), under a deadline.
 *
 * Takes: where to connect (address, port, the local address to bind), timeouts, TLS options for
 *   STARTTLS (never verified here: delivery-tls.ts judges the socket afterwards), and a wire
 *   logger, which the ReplyClock (delivery-throttle.ts) and the Transcript
 *   (delivery-transcript.ts) read: `info({tnx: 'network', ...})` once connected, `debug({tnx:
 *   'client'}, line)` for each command, `debug({tnx: 'server'}, reply)` for each reply (lines
 *   joined by "\n"), `info({tnx: 'message', outByteCount})` after a body, `info({tnx: 'smtp'},
 *   'Connection upgraded with STARTTLS')`, `error({err})` for the failure that ends it.
 * Gives: `Reply` values; a connection that breaks or stays silent past the deadline rejects the
 *   pending call with an error carrying `code` (ECONNREFUSED, ETIMEDOUT, ECONNRESET, ETLS,
 *   EPROTOCOL, ...). 'end' is emitted once, when the connection is over (or never came up).
 * Network: TCP to the destination, TLS after STARTTLS.
 * Wire format (replies, dot-stuffing, xtext): smtp-wire.ts.
 * RFCs: 5321 (replies, HELO fallback, 421), 2920 (PIPELINING), 2033 (LHLO, a reply per recipient
 *   after the data), 3207 (STARTTLS), 1870 (SIZE).
 */
import { EventEmitter } from 'node:events';
import { connect as tcpConnect, type Socket } from 'node:net';
import type { Readable } from 'node:stream';
import { connect as tlsConnect, type ConnectionOptions as TlsOptions, type TLSSocket } from 'node:tls';
import { connectionError, dotStuffed, ReplyReader, replyString, type ConnectionError, type Reply } from './smtp-wire.js';

export { replyString, replyText, type ConnectionError, type Reply } from './smtp-wire.js';

/** The bunyan-style logger the connection writes its dialogue to: level(entry, message, ...args). */
export type WireLogger = Record<'trace' | 'debug' | 'info' | 'warn' | 'error' | 'fatal', (entry: Record<string, unknown>, message?: string, ...args: unknown[]) => void>;

export interface SmtpConnectionOptions {
  address: string;
  port: number;
  localAddress?: string | null;
  connectTimeout: number;
  /** How long the greeting may take (default: replyTimeout). */
  greetingTimeout?: number;
  replyTimeout: number;
  logger: WireLogger;
}

/** How the handshake treats STARTTLS: not at all, when the server offers it, or always (refusal ends the handshake). */
export type StartTls = 'never' | 'offered' | 'always';

export interface HandshakeOptions {
  name: string;
  lmtp: boolean;
  starttls: StartTls;
  tls: TlsOptions;
}

/** What ended a handshake short of a usable session: the reply and the step that gave it. */
export type HandshakeRefusal = { step: 'greeting' | 'hello' | 'starttls'; reply: Reply };

interface Waiter {
  resolve: (r: Reply) => void;
  reject: (e: Error) => void;
}

export class SmtpConnection extends EventEmitter {
  #socket: Socket | TLSSocket | null = null;
  readonly #reader = new ReplyReader();
  /** Calls waiting for their replies, in the order the commands went out. */
  readonly #waiters: Waiter[] = [];
  #timer: NodeJS.Timeout | null = null;
  /** Replies that came before anyone asked (a server answering DATA early). */
  #early: Reply[] = [];
  #failure: Error | null = null;
  #ended = false;
  #quitting = false;
  /** Closed from this side (not the peer's doing). */
  #closedHere = false;
  #detach: () => void = () => undefined;
  greeting: Reply | null = null;
  /** The extensions of the last EHLO/LHLO reply, by keyword, with their parameters. */
  readonly extensions = new Map<string, string>();

  constructor(private readonly opts: SmtpConnectionOptions) {
    super();
  }

  /** Connects and reads the greeting (whatever its code: the caller decides); 'end' follows a failure. */
  async connect(): Promise<Reply> {
    const { address, port, localAddress } = this.opts;
    const socket = tcpConnect({ host: address, port, localAddress: localAddress ?? undefined });
    this.#socket = socket;
    socket.setNoDelay(true);
    try {
      await new Promise<void>((resolve, reject) => {
        const timer = setTimeout(() => reject(connectionError(`connection to ${address}:${port} timed out`, 'ETIMEDOUT')), this.opts.connectTimeout);
        socket.once('connect', () => { clearTimeout(timer); resolve(); });
        socket.once('error', (err) => { clearTimeout(timer); reject(err); });
      });
    } catch (err) {
      this.opts.logger.error({ tnx: 'network', err }, (err as Error).message);
      this.#failure = err as Error;
      this.#end();
      socket.destroy();
      throw err;
    }
    this.#attach(socket);
    this.opts.logger.info({ tnx: 'network', remoteAddress: socket.remoteAddress, remotePort: socket.remotePort, localAddress: socket.localAddress, localPort: socket.localPort }, 'connected');
    this.greeting = await this.#read(this.opts.greetingTimeout ?? this.opts.replyTimeout);
    return this.greeting;
  }

  get socket(): Socket | TLSSocket | null {
    return this.#socket;
  }

  /** Over, or on its way out (QUIT said): not to be used again. */
  get ended(): boolean {
    return this.#ended;
  }

  get closing(): boolean {
    return this.#quitting || this.#ended;
  }

  /** The largest message the server takes (SIZE), 0 when it named none. */
  get maxSize(): number {
    return Number(this.extensions.get('SIZE')) || 0;
  }

  /**
   * EHLO (LHLO for LMTP), or HELO when the server refuses EHLO with a 5xx and `heloFallback`
   * allows it; records the extensions offered.
   */
  async hello(name: string, lmtp = false, heloFallback = true): Promise<Reply> {
    let reply = await this.command(`${lmtp ? 'LHLO' : 'EHLO'} ${name}`);
    this.extensions.clear();
    if (reply.code >= 500 && !lmtp && heloFallback) {
      reply = await this.command(`HELO ${name}`);
      return reply;
    }
    if (reply.code === 250) {
      for (const line of reply.lines.slice(1)) {
        const [word, ...rest] = line.trim().split(/\s+/);
        if (word) this.extensions.set(word.toUpperCase(), rest.join(' '));
      }
    }
    return reply;
  }

  /**
   * The greeting checked, hello said, STARTTLS as asked and hello again over TLS: null when the
   * session is ready for a transaction, else the reply that ended it and at which step. A
   * refused STARTTLS ends it only for `always`; `offered` goes on in plaintext.
   */
  async handshake(o: HandshakeOptions): Promise<HandshakeRefusal | null> {
    const greeting = this.greeting ?? await this.connect();
    if (greeting.code !== 220) return { step: 'greeting', reply: greeting };
    // A session that must turn to TLS never falls back to HELO, which cannot say STARTTLS.
    let hello = await this.hello(o.name, o.lmtp, o.starttls !== 'always');
    if (hello.code !== 250) return { step: 'hello', reply: hello };
    const wanted = o.starttls === 'always' || (o.starttls === 'offered' && this.extensions.has('STARTTLS'));
    if (!wanted) return null;
    const tls = await this.starttls(o.tls);
    if (tls.code !== 220) return o.starttls === 'always' ? { step: 'starttls', reply: tls } : null;
    hello = await this.hello(o.name, o.lmtp, false);
    return hello.code === 250 ? null : { step: 'hello', reply: hello };
  }

  /** STARTTLS and the TLS handshake; resolves with the server's reply to STARTTLS (the caller says hello again). */
  async starttls(tls: TlsOptions): Promise<Reply> {
    const reply = await this.command('STARTTLS');
    if (reply.code !== 220) return reply;
    const plain = this.#socket as Socket;
    // From here the TLS socket carries the replies, and its close is the connection's end.
    this.#detach();
    const secure = tlsConnect({ ...tls, socket: plain });
    this.#socket = secure;
    try {
      await new Promise<void>((resolve, reject) => {
        const timer = setTimeout(() => reject(connectionError('TLS handshake timed out', 'ETIMEDOUT')), this.opts.replyTimeout);
        secure.once('secureConnect', () => { clearTimeout(timer); resolve(); });
        secure.once('error', (err) => { clearTimeout(timer); reject(err); });
        secure.once('close', () => { clearTimeout(timer); reject(connectionError('the destination closed the connection during the TLS handshake', 'ECONNRESET')); });
      });
    } catch (err) {
      const e = err as NodeJS.ErrnoException;
      const failure = connectionError(e.message, e.code === 'ETIMEDOUT' ? 'ETIMEDOUT' : 'ETLS', { duringTls: true });
      this.#fail(failure);
      this.#end();
      secure.destroy();
      throw failure;
    }
    this.#attach(secure);
    this.opts.logger.info({ tnx: 'smtp' }, 'Connection upgraded with STARTTLS');
    return reply;
  }

  /** Sends one command line and reads its reply. */
  async command(line: string): Promise<Reply> {
    return (await this.pipeline([line]))[0];
  }

  /**
   * Sends command lines in one write and reads their replies, in order (RFC 2920: only where the
   * server offered PIPELINING, for more than one line). Replies pair with commands by order
   * alone, so a call while another still waits is refused. `before(i)` runs just before line i
   * is logged (a transcript ties the lines from there on to another message).
   */
  async pipeline(lines: string[], before?: (i: number) => void): Promise<Reply[]> {
    this.#check();
    if (this.#waiters.length > 0) throw connectionError('a command is still waiting for its reply', 'EBUSY');
    lines.forEach((line, i) => {
      before?.(i);
      this.opts.logger.debug({ tnx: 'client' }, line);
    });
    const replies = lines.map(() => this.#read(this.opts.replyTimeout));
    this.#socket!.write(lines.map((l) => l + '\r\n').join(''));
    return Promise.all(replies);
  }

  /** DATA, then (on 354) the body dot-stuffed and the final dot; resolves with the reply that ends it. */
  async data(body: Readable, onProgress?: (bytes: number) => void): Promise<Reply> {
    const go = await this.command('DATA');
    if (go.code !== 354) {
      body.resume();
      return go;
    }
    return (await this.body(body, 1, onProgress))[0];
  }

  /**
   * After a 354: the body dot-stuffed and the final dot, then `replies` replies (one for SMTP,
   * one per accepted recipient for LMTP). A body that breaks off closes the connection: the
   * destination must not take a partial message.
   */
  async body(body: Readable, replies: number, onProgress?: (bytes: number) => void): Promise<Reply[]> {
    let bytes = 0;
    let corked = false;
    try {
      const socket = this.#socket!;
      for await (const chunk of dotStuffed(body)) {
        this.#check();
        bytes += chunk.length;
        onProgress?.(bytes);
        // Chunks that come in the same turn of the event loop (the last one and the final dot, most
        // often, which the stream ends with a few ticks after its last chunk) leave in one write.
        if (!corked) {
          corked = true;
          socket.cork();
          setImmediate(() => {
            corked = false;
            socket.uncork();
          });
        }
        if (socket.write(chunk)) continue;
        // A destination that goes away while its buffers are full never drains: the close ends the wait too.
        await new Promise<void>((resolve) => {
          const done = () => { clearTimeout(timer); socket.off('drain', done); socket.off('close', done); resolve(); };
          // A destination that stops reading is as silent as one that stops answering.
          const timer = setTimeout(() => {
            this.#fail(connectionError(`the destination took no data for ${this.opts.replyTimeout} ms`, 'ETIMEDOUT'));
            this.close();
            done();
          }, this.opts.replyTimeout);
          socket.on('drain', done);
          socket.on('close', done);
        });
      }
      this.#check();
    } catch (err) {
      this.close();
      throw err;
    }
    this.opts.logger.info({ tnx: 'message', outByteCount: bytes }, `<${bytes} bytes>`);
    const pending: Array<Promise<Reply>> = [];
    for (let i = 0; i < replies; i++) pending.push(this.#read(this.opts.replyTimeout, true));
    return Promise.all(pending);
  }

  /** QUIT politely, then close; never throws. */
  async quit(): Promise<void> {
    if (this.#ended || this.#quitting) return;
    this.#quitting = true;
    try {
      await this.command('QUIT');
    } catch {
      // closing anyway
    }
    this.close();
  }

  close(): void {
    this.#closedHere = true;
    if (this.#socket) this.#socket.destroy();
    else this.#end();
  }

  #check(): void {
    if (this.#failure) throw this.#failure;
    if (this.#ended || !this.#socket) throw connectionError('the destination closed the connection', 'ECONNRESET');
  }

  #end(): void {
    if (this.#ended) return;
    this.#ended = true;
    this.emit('end');
  }

  #attach(socket: Socket | TLSSocket): void {
    const onData = (d: Buffer) => this.#onData(d);
    const onError = (err: Error) => this.#fail(err);
    const onClose = () => {
      const err = connectionError('the destination closed the connection', 'ECONNRESET');
      // Between commands a close ends the session; a call that waits fails with it. After QUIT the
      // wait for the 221 ends quietly: left pending, it would hold its reply timer for minutes.
      if (this.#waiters.length > 0 && !this.#quitting) {
        this.#fail(err);
      } else {
        if (!this.#quitting && !this.#closedHere && !this.#failure) this.opts.logger.info({ tnx: 'network' }, 'Server closed the idle connection');
        this.#rejectAll(this.#failure ??= err);
      }
      this.#end();
    };
    socket.on('data', onData);
    socket.on('error', onError);
    socket.on('close', onClose);
    this.#detach = () => {
      socket.off('data', onData);
      socket.off('error', onError);
      socket.off('close', onClose);
    };
  }

  #onData(d: Buffer): void {
    let replies: Reply[];
    try {
      replies = this.#reader.push(d);
    } catch (err) {
      this.#fail(err as Error);
      this.close();
      return;
    }
    for (const reply of replies) this.#deliver(reply);
  }

  #deliver(reply: Reply): void {
    this.opts.logger.debug({ tnx: 'server' }, replyString(reply));
    const w = this.#waiters.shift();
    if (!w) {
      this.#early.push(reply);
      return;
    }
    this.#disarm();
    if (reply.code === 421) {
      // The server is closing the channel (RFC 5321 3.8): its 421 answers every command still
      // waiting, and the connection ends here.
      w.resolve(reply);
      for (const other of this.#waiters.splice(0)) other.resolve(reply);
      this.close();
      return;
    }
    // The next reply of a pipelined batch has its own deadline, from this one.
    if (this.#waiters.length > 0) this.#arm(this.opts.replyTimeout, false);
    w.resolve(reply);
  }

  #read(timeoutMs: number, long = false): Promise<Reply> {
    return new Promise<Reply>((resolve, reject) => {
      const early = this.#early.shift();
      if (early) return resolve(early);
      if (this.#failure) return reject(this.#failure);
      this.#waiters.push({ resolve, reject });
      if (!this.#timer) this.#arm(timeoutMs, long);
    });
  }

  #arm(timeoutMs: number, long: boolean): void {
    this.#timer = setTimeout(() => {
      this.#timer = null;
      this.#fail(connectionError(`no reply within ${timeoutMs} ms${long ? ' after the data' : ''}`, 'ETIMEDOUT'));
      this.close();
    }, timeoutMs);
  }

  #disarm(): void {
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = null;
  }

  #fail(err: Error): void {
    this.#failure ??= err;
    if (err !== this.#failure) return;
    this.opts.logger.error({ err }, err.message);
    this.#rejectAll(err);
  }

  #rejectAll(err: Error): void {
    this.#disarm();
    for (const w of this.#waiters.splice(0)) w.reject(err);
  }
}
