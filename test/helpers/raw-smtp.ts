/*
 * A raw SMTP client over a real socket, for golden dialogues and for byte sequences no
 * well-behaved client would send (smuggling endings, pipelined plaintext before STARTTLS).
 * `reply()` waits for one complete (possibly multi-line) reply.
 */
import { connect, type Socket } from 'node:net';
import { connect as tlsConnect, type TLSSocket } from 'node:tls';

export class RawSmtp {
  #buf = '';
  #waiters: Array<() => void> = [];
  closed = false;
  transcript: string[] = [];

  private constructor(public socket: Socket | TLSSocket) {
    this.#attach(socket);
  }

  #attach(socket: Socket | TLSSocket): void {
    socket.setNoDelay(true);
    socket.on('data', (d: Buffer) => {
      this.#buf += d.toString('latin1');
      for (const w of this.#waiters.splice(0)) w();
    });
    socket.on('close', () => {
      this.closed = true;
      for (const w of this.#waiters.splice(0)) w();
    });
    socket.on('error', () => undefined);
  }

  /** `localAddress` picks the client's own address (127.0.0.x), for per-client limits. */
  static open(port: number, host = '127.0.0.1', localAddress?: string): Promise<RawSmtp> {
    return new Promise((resolve, reject) => {
      const s = connect({ port, host, localAddress }, () => resolve(new RawSmtp(s)));
      s.once('error', reject);
    });
  }

  /**
   * A session up to DATA's 354: greeting, EHLO, MAIL FROM:<from>, one RCPT per entry of `to`
   * (each may carry parameters after the address: "a@b.test NOTIFY=NEVER"). Every reply must be 2xx/3xx.
   */
  static async atData(port: number, from: string, to: string[]): Promise<RawSmtp> {
    const c = await RawSmtp.open(port);
    await c.reply();
    const rcpt = (r: string) => {
      const [address, ...params] = r.split(' ');
      return [`RCPT TO:<${address}>`, ...params].join(' ');
    };
    for (const line of ['EHLO client.test', `MAIL FROM:<${from}>`, ...to.map(rcpt), 'DATA']) {
      const reply = await c.command(line);
      if (!/^[23]/.test(reply)) throw new Error(`${line} → ${reply}`);
    }
    return c;
  }

  /** Sends the message and returns the queue id from the 250 (throws on any other reply). */
  async finishData(message: string): Promise<string> {
    this.send(`${message}.\r\n`);
    const reply = (await this.reply()).join('\n');
    if (!/^250 /.test(reply)) throw new Error(`end of data → ${reply}`);
    return reply.split(' ').pop()!;
  }

  send(bytes: string | Buffer): void {
    this.transcript.push(`C: ${bytes.toString().replace(/\r\n$/, '')}`);
    this.socket.write(bytes);
  }

  /** One complete reply ("250-a\r\n250 b\r\n"), as its lines. */
  async reply(timeoutMs = 10_000): Promise<string[]> {
    const until = Date.now() + timeoutMs;
    for (;;) {
      const m = /^((?:\d{3}-[^\r\n]*\r\n)*\d{3}(?: [^\r\n]*)?\r\n)/.exec(this.#buf);
      if (m) {
        this.#buf = this.#buf.slice(m[1].length);
        const lines = m[1].split('\r\n').filter(Boolean);
        for (const l of lines) this.transcript.push(`S: ${l}`);
        return lines;
      }
      if (this.closed) throw new Error(`connection closed; pending: ${JSON.stringify(this.#buf)}`);
      if (Date.now() > until) throw new Error(`no reply within ${timeoutMs} ms; pending: ${JSON.stringify(this.#buf)}`);
      await new Promise<void>((r) => { this.#waiters.push(r); setTimeout(r, 50); });
    }
  }

  async command(line: string): Promise<string> {
    this.send(line + '\r\n');
    return (await this.reply()).join('\n');
  }

  /** Whatever the server sends within `ms` (for "nothing more arrives" checks). */
  async drain(ms: number): Promise<string> {
    await new Promise((r) => setTimeout(r, ms));
    const out = this.#buf;
    this.#buf = '';
    return out;
  }

  async startTls(servername?: string): Promise<void> {
    const tls = tlsConnect({ socket: this.socket as Socket, rejectUnauthorized: false, servername });
    await new Promise<void>((resolve, reject) => { tls.once('secureConnect', () => resolve()); tls.once('error', reject); });
    this.socket.removeAllListeners('data');
    this.socket = tls;
    this.#attach(tls);
  }

  close(): void {
    this.socket.destroy();
  }
}
