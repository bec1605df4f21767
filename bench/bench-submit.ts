/*
 * A tenant's mail user agents for the comparison benchmark: a few SMTP connections from the tenant's
 * own loopback address, kept open and reused, sending whatever has been queued to them, MAIL, RCPT
 * and DATA in one write (both relays offer PIPELINING). A plain socket client, so that the load
 * costs little CPU next to the relays it measures.
 *
 * Takes: the tenant's letter and source address, the relay's port on 127.0.0.1, how many
 * connections, the message size; then lists of (sequence number, recipient) to send.
 * Gives: when each message got its 250 (by sequence number), how many were refused or lost with
 * their connection, when the first was queued; `drain()` waits for the queue to empty, `stop()`
 * drops what is left and closes the connections.
 * Each message has a Message-ID and an X-Bench header naming tenant, number and time of sending.
 */
import { connect, type Socket } from 'node:net';

const REPLY_TIMEOUT_MS = 60_000;
const FILLER = 'The quick brown fox jumps over the lazy dog, and then does it again for good measure.\r\n';

export interface Item { seq: number; to: string }

/** Whole replies (multi-line ones joined) from one connection, in order. */
class Replies {
  #buffer = '';
  #ready: number[] = [];
  #waiters: Array<(code: number | Error) => void> = [];
  #failure: Error | null = null;

  constructor(socket: Socket) {
    socket.on('data', (d: Buffer) => {
      this.#buffer += d.toString('latin1');
      let nl: number;
      while ((nl = this.#buffer.indexOf('\n')) >= 0) {
        const line = this.#buffer.slice(0, nl);
        this.#buffer = this.#buffer.slice(nl + 1);
        if (line[3] !== '-') this.#deliver(Number(line.slice(0, 3)));
      }
    });
    socket.on('error', (err) => this.#fail(err));
    socket.on('close', () => this.#fail(new Error('connection closed')));
  }

  next(): Promise<number> {
    const code = this.#ready.shift();
    if (code !== undefined) return Promise.resolve(code);
    if (this.#failure) return Promise.reject(this.#failure);
    return new Promise((resolve, reject) => this.#waiters.push((c) => (c instanceof Error ? reject(c) : resolve(c))));
  }

  #deliver(code: number): void {
    const waiter = this.#waiters.shift();
    if (waiter) waiter(code);
    else this.#ready.push(code);
  }

  #fail(err: Error): void {
    this.#failure ??= err;
    for (const w of this.#waiters.splice(0)) w(err);
  }
}

class Connection {
  readonly replies: Replies;
  #timer: NodeJS.Timeout | undefined;

  private constructor(readonly socket: Socket) {
    this.replies = new Replies(socket);
  }

  static async open(port: number, localAddress: string, name: string): Promise<Connection> {
    const socket = connect({ host: '127.0.0.1', port, localAddress });
    socket.setNoDelay(true);
    const c = new Connection(socket);
    await c.expect(220);
    socket.write(`EHLO ${name}\r\n`);
    await c.expect(250);
    return c;
  }

  /** The next reply, which must have the given code. */
  async expect(code: number): Promise<void> {
    this.#timer = setTimeout(() => this.socket.destroy(new Error(`no reply within ${REPLY_TIMEOUT_MS} ms`)), REPLY_TIMEOUT_MS);
    try {
      const got = await this.replies.next();
      if (got !== code) throw new Error(`expected ${code}, got ${got}`);
    } finally {
      clearTimeout(this.#timer);
    }
  }
}

export class Submitter {
  readonly accepted = new Map<number, number>();
  failed = 0;
  firstSubmission = 0;
  #queue: Item[] = [];
  #busy = 0;
  #wake: Array<() => void> = [];
  #stopped = false;
  #workers: Array<Promise<void>>;
  readonly #body: string;

  constructor(readonly tenant: string, readonly address: string, private readonly port: number, connections: number, size = 2048) {
    this.#body = FILLER.repeat(Math.ceil(Math.max(0, size - 300) / FILLER.length));
    this.#workers = Array.from({ length: connections }, () => this.#work());
  }

  submit(items: Item[]): void {
    this.firstSubmission ||= Date.now();
    this.#queue.push(...items);
    for (const w of this.#wake.splice(0)) w();
  }

  /** Waits until everything queued has its answer, for at most timeoutMs. */
  async drain(timeoutMs: number): Promise<void> {
    const until = Date.now() + timeoutMs;
    while ((this.#queue.length > 0 || this.#busy > 0) && Date.now() < until) await new Promise((r) => setTimeout(r, 20));
  }

  /** Drops what is still queued, closes the connections; returns how many were dropped. */
  async stop(): Promise<number> {
    this.#stopped = true;
    const dropped = this.#queue.splice(0).length;
    for (const w of this.#wake.splice(0)) w();
    await Promise.all(this.#workers);
    return dropped;
  }

  #message(item: Item): string {
    const now = Date.now();
    return [`From: <mua@${this.tenant}.bench.test>`, `To: <${item.to}>`, `Subject: bench ${this.tenant} ${item.seq}`,
      `Date: ${new Date(now).toUTCString()}`, `Message-ID: <${this.tenant}.${item.seq}.${now}@${this.tenant}.bench.test>`,
      `X-Bench: ${this.tenant} ${item.seq} ${now}`, '', this.#body].join('\r\n') + '.\r\n';
  }

  async #work(): Promise<void> {
    let conn: Connection | undefined;
    while (!this.#stopped) {
      const item = this.#queue.shift();
      if (!item) {
        await new Promise<void>((r) => this.#wake.push(r));
        continue;
      }
      this.#busy++;
      try {
        conn ??= await Connection.open(this.port, this.address, `mua.${this.tenant}.bench.test`);
        conn.socket.write(`MAIL FROM:<mua@${this.tenant}.bench.test>\r\nRCPT TO:<${item.to}>\r\nDATA\r\n`);
        await conn.expect(250);
        await conn.expect(250);
        await conn.expect(354);
        conn.socket.write(this.#message(item));
        await conn.expect(250);
        this.accepted.set(item.seq, Date.now());
      } catch {
        this.failed++;
        // The connection's state is unknown after a refusal mid-transaction: start afresh.
        conn?.socket.destroy();
        conn = undefined;
      } finally {
        this.#busy--;
      }
    }
    if (conn) {
      const { socket } = conn;
      socket.end('QUIT\r\n');
      setTimeout(() => socket.destroy(), 1000).unref();
    }
  }
}
