/*
 * A command-by-command SMTP client for the transparent proxy.
 *
 * The proxy relays a live session: each MAIL, RCPT and DATA of its client goes to the destination
 * when the client sends it, and the destination's reply goes back. nodemailer's client sends a
 * whole envelope at once, so this small client gives one call per command instead: connect (and
 * read the greeting), EHLO (HELO when EHLO is refused), STARTTLS, any command line, DATA with a
 * streamed, dot-stuffed body, QUIT. Every reply is read whole (multi-line), under a deadline.
 *
 * Takes: where to connect (address, port, the local address to bind), timeouts, TLS options for
 *   STARTTLS, and a logger in nodemailer's shape, so the same Transcript (delivery-transcript.ts)
 *   and ReplyClock (delivery-throttle.ts) record it as they record the queued path's sessions.
 * Gives: `Reply` values; a connection that breaks or stays silent past the deadline rejects the
 *   pending call with an error carrying `code` (ECONNREFUSED, ETIMEDOUT, ECONNRESET, ...).
 * Network: TCP to the destination, TLS after STARTTLS.
 * RFCs: 5321 (replies, dot-stuffing, HELO fallback), 3207 (STARTTLS), 1870 (SIZE).
 */
import { EventEmitter } from 'node:events';
import { connect as tcpConnect, type Socket } from 'node:net';
import type { Readable } from 'node:stream';
import { connect as tlsConnect, type ConnectionOptions, type TLSSocket } from 'node:tls';
import type { WireLogger } from '../delivery-transcript.js';

export interface Reply {
  code: number;
  /** The lines as received, without their code and separator. */
  lines: string[];
  /** The whole reply as it would be sent on: "250-first\r\n250 last". */
  raw: string;
}

export interface ClientOptions {
  address: string;
  port: number;
  localAddress?: string | null;
  connectTimeout: number;
  replyTimeout: number;
  logger: WireLogger;
}

const MAX_REPLY_LINES = 100;
const MAX_LINE = 4096;

export function replyText(r: Reply): string {
  return r.lines.join(' / ');
}

/** Adds a dot to every line that begins with one and ends the data with CRLF "." CRLF. */
async function* dotStuffed(body: Readable): AsyncGenerator<Buffer> {
  let atLineStart = true;
  let lastTwo = '\r\n';
  for await (const raw of body) {
    const chunk = raw as Buffer;
    if (chunk.length === 0) continue;
    const parts: Buffer[] = [];
    let from = 0;
    for (let i = 0; i < chunk.length; i++) {
      if (atLineStart && chunk[i] === 0x2e) {
        parts.push(chunk.subarray(from, i), Buffer.from('.'));
        from = i;
      }
      atLineStart = chunk[i] === 0x0a;
    }
    parts.push(chunk.subarray(from));
    lastTwo = (lastTwo + chunk.subarray(Math.max(0, chunk.length - 2)).toString('latin1')).slice(-2);
    yield Buffer.concat(parts);
  }
  yield Buffer.from(lastTwo === '\r\n' ? '.\r\n' : '\r\n.\r\n');
}

/**
 * Cuts a stream of reply bytes into whole replies ("250-a", "250 b" make one); a line that is not
 * a reply line, or too many or too long lines, is a protocol error.
 */
export class ReplyReader {
  #buffer = '';
  #lines: string[] = [];

  /** The replies completed by this chunk, in order. */
  push(chunk: Buffer): Reply[] {
    this.#buffer += chunk.toString('latin1');
    const done: Reply[] = [];
    let nl: number;
    while ((nl = this.#buffer.indexOf('\n')) >= 0) {
      const line = this.#buffer.slice(0, nl).replace(/\r$/, '');
      this.#buffer = this.#buffer.slice(nl + 1);
      this.#lines.push(line);
      if (this.#lines.length > MAX_REPLY_LINES) throw Object.assign(new Error('reply too long'), { code: 'EPROTOCOL' });
      if (/^\d{3}(?: |$)/.test(line)) {
        const lines = this.#lines;
        this.#lines = [];
        done.push({ code: Number(line.slice(0, 3)), lines: lines.map((l) => l.slice(4)), raw: lines.join('\r\n') });
      } else if (!/^\d{3}-/.test(line)) {
        throw Object.assign(new Error(`not an SMTP reply: ${line.slice(0, 80)}`), { code: 'EPROTOCOL' });
      }
    }
    if (this.#buffer.length > MAX_LINE) throw Object.assign(new Error('reply line too long'), { code: 'EPROTOCOL' });
    return done;
  }
}

export class SmtpClient extends EventEmitter {
  #socket: Socket | TLSSocket;
  readonly #reader = new ReplyReader();
  #waiter: { resolve: (r: Reply) => void; reject: (e: Error) => void; timer: NodeJS.Timeout } | null = null;
  /** Replies that came before anyone asked (a server answering DATA early). */
  #early: Reply[] = [];
  #failure: Error | null = null;
  #ended = false;
  #quitting = false;
  greeting: Reply | null = null;
  extensions = new Map<string, string>();

  private constructor(socket: Socket, private readonly opts: ClientOptions) {
    super();
    this.#socket = socket;
    this.#attach(socket);
  }

  /** Connects and reads the greeting (whatever its code: the caller decides). */
  static async open(opts: ClientOptions): Promise<SmtpClient> {
    const socket = tcpConnect({ host: opts.address, port: opts.port, localAddress: opts.localAddress ?? undefined });
    socket.setNoDelay(true);
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        socket.destroy();
        reject(Object.assign(new Error(`connection to ${opts.address}:${opts.port} timed out`), { code: 'ETIMEDOUT' }));
      }, opts.connectTimeout);
      socket.once('connect', () => { clearTimeout(timer); resolve(); });
      socket.once('error', (err) => { clearTimeout(timer); reject(err); });
    });
    const client = new SmtpClient(socket, opts);
    opts.logger.info({ tnx: 'network', remoteAddress: socket.remoteAddress, remotePort: socket.remotePort, localAddress: socket.localAddress, localPort: socket.localPort }, 'connected');
    client.greeting = await client.#read(opts.replyTimeout);
    return client;
  }

  get socket(): Socket | TLSSocket {
    return this.#socket;
  }

  get ended(): boolean {
    return this.#ended;
  }

  /** EHLO, or HELO when the server refuses EHLO; records the extensions offered. */
  async hello(name: string): Promise<Reply> {
    let reply = await this.command(`EHLO ${name}`);
    this.extensions.clear();
    if (reply.code >= 500) {
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

  /** STARTTLS and the handshake; resolves with the server's reply to STARTTLS (the caller says EHLO again). */
  async starttls(tls: ConnectionOptions): Promise<Reply> {
    const reply = await this.command('STARTTLS');
    if (reply.code !== 220) return reply;
    const plain = this.#socket as Socket;
    plain.removeAllListeners('data');
    const secure = tlsConnect({ ...tls, socket: plain });
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        secure.destroy();
        reject(Object.assign(new Error('TLS handshake timed out'), { code: 'ETIMEDOUT' }));
      }, this.opts.replyTimeout);
      secure.once('secureConnect', () => { clearTimeout(timer); resolve(); });
      secure.once('error', (err) => { clearTimeout(timer); reject(Object.assign(err, { code: (err as NodeJS.ErrnoException).code ?? 'ETLS' })); });
    });
    this.#socket = secure;
    this.#attach(secure);
    this.opts.logger.info({ tnx: 'smtp' }, 'Connection upgraded with STARTTLS');
    return reply;
  }

  /** Sends one command line and reads its reply. */
  async command(line: string): Promise<Reply> {
    this.#check();
    // Replies are matched to commands by order alone: a second command before the first's reply
    // would take that reply as its own.
    if (this.#waiter) throw Object.assign(new Error('a command is still waiting for its reply'), { code: 'EBUSY' });
    this.opts.logger.debug({ tnx: 'client' }, line);
    const reply = this.#read(this.opts.replyTimeout);
    this.#socket.write(line + '\r\n');
    return reply;
  }

  /** DATA, then (on 354) the body dot-stuffed and the final dot; resolves with the reply that ends it. */
  async data(body: Readable, onProgress?: (bytes: number) => void): Promise<Reply> {
    const go = await this.command('DATA');
    if (go.code !== 354) {
      body.resume();
      return go;
    }
    let bytes = 0;
    try {
      const socket = this.#socket;
      for await (const chunk of dotStuffed(body)) {
        this.#check();
        bytes += chunk.length;
        onProgress?.(bytes);
        if (socket.write(chunk)) continue;
        // A destination that goes away while its buffers are full never drains: the close ends the wait too.
        await new Promise<void>((resolve) => {
          const done = () => { clearTimeout(timer); socket.off('drain', done); socket.off('close', done); resolve(); };
          // A destination that stops reading is as silent as one that stops answering.
          const timer = setTimeout(() => {
            this.#fail(Object.assign(new Error(`the destination took no data for ${this.opts.replyTimeout} ms`), { code: 'ETIMEDOUT' }));
            this.close();
            done();
          }, this.opts.replyTimeout);
          socket.on('drain', done);
          socket.on('close', done);
        });
      }
      this.#check();
    } catch (err) {
      // The client's data broke off: the destination must not take a partial message.
      this.close();
      throw err;
    }
    this.opts.logger.info({ tnx: 'message', outByteCount: bytes }, `<${bytes} bytes>`);
    return this.#read(this.opts.replyTimeout, true);
  }

  /** QUIT politely, then close; never throws. */
  async quit(): Promise<void> {
    if (this.#ended) return;
    this.#quitting = true;
    try {
      await this.command('QUIT');
    } catch {
      // closing anyway
    }
    this.close();
  }

  close(): void {
    this.#socket.destroy();
  }

  #check(): void {
    if (this.#failure) throw this.#failure;
    if (this.#ended) throw Object.assign(new Error('the destination closed the connection'), { code: 'ECONNRESET' });
  }

  #attach(socket: Socket | TLSSocket): void {
    socket.on('data', (d: Buffer) => this.#onData(d));
    socket.on('error', (err) => this.#fail(err));
    socket.on('close', () => {
      this.#ended = true;
      const err = Object.assign(new Error('the destination closed the connection'), { code: 'ECONNRESET' });
      // Between commands a close ends the session; a call that waits fails with it. After QUIT the
      // wait for the 221 ends quietly: left pending, it would hold its reply timer for minutes.
      const w = this.#waiter;
      if (w && this.#quitting) {
        this.#waiter = null;
        clearTimeout(w.timer);
        this.#failure ??= err;
        w.reject(err);
      } else if (w) {
        this.#fail(err);
      } else {
        this.#failure ??= err;
      }
      this.emit('end');
    });
  }

  #onData(d: Buffer): void {
    let replies: Reply[];
    try {
      replies = this.#reader.push(d);
    } catch (err) {
      return this.#fail(err as Error);
    }
    for (const reply of replies) this.#deliver(reply);
  }

  #deliver(reply: Reply): void {
    this.opts.logger.debug({ tnx: 'server' }, reply.raw.replace(/\r\n/g, '\n'));
    const w = this.#waiter;
    this.#waiter = null;
    if (w) {
      clearTimeout(w.timer);
      w.resolve(reply);
    } else {
      this.#early.push(reply);
    }
  }

  #read(timeoutMs: number, long = false): Promise<Reply> {
    return new Promise<Reply>((resolve, reject) => {
      const early = this.#early.shift();
      if (early) return resolve(early);
      if (this.#failure) return reject(this.#failure);
      const timer = setTimeout(() => {
        this.#fail(Object.assign(new Error(`no reply within ${timeoutMs} ms${long ? ' after the data' : ''}`), { code: 'ETIMEDOUT' }));
        this.close();
      }, timeoutMs);
      this.#waiter = { resolve, reject, timer };
    });
  }

  #fail(err: Error): void {
    this.#failure ??= err;
    if (err !== this.#failure) return;
    this.opts.logger.error({ err }, err.message);
    const w = this.#waiter;
    this.#waiter = null;
    if (w) {
      clearTimeout(w.timer);
      w.reject(err);
    }
  }
}
