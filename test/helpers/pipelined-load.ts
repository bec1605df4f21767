/*
 * A pipelining SMTP load generator that times every transaction, run as a process of its own
 * inside a benchmark's client namespace (bench/bench-proxy.ts). It sends as a legacy MTA's client
 * does when PIPELINING is offered: MAIL FROM, RCPT TO and DATA in one write, the body after 354.
 * Or, with pipelining 0, as a client that does not pipeline: each command written only once the
 * previous one's reply has been read (lockstep), PIPELINING not required of the server.
 * smtp-source cannot stand in: it neither pipelines nor reports per-transaction times.
 *
 * Takes: argv `<host> <port> <messages> <sessions> <bytes> <reuse: 0|1> [pipelining: 1|0] [recipients]`:
 * that many messages of about that size, over that many sessions at once, each session carrying one
 * message per connection (reuse 0) or all its messages over one connection (reuse 1); pipelining 1
 * (the default) or lockstep (0); each message to `recipients` recipients of dest.test (default 1),
 * every one of which must be taken (250).
 * Gives: one JSON line on stdout when done: { accepted, failed, failures (the first few replies or
 * errors), greetings (connections per distinct greeting text: whom the client really talked to),
 * finals (replies per distinct final text), elapsedMs (first connection to last final reply),
 * latencies (ms per accepted transaction, from writing MAIL FROM to reading the final reply) }.
 * Exits 1 only when it cannot run at all; refused transactions are data, not errors.
 */
import { connect, type Socket } from 'node:net';
import { ReplyReader } from '../../delivery/smtp/smtp-wire.js';

interface Reply { code: number; text: string }

const REPLY_TIMEOUT_MS = 60_000;
const FAILURES_KEPT = 5;

/** Reads whole (possibly multi-line) replies off a socket, one at a time. */
class Replies {
  readonly #reader = new ReplyReader();
  #ready: Reply[] = [];
  #waiter: ((r: Reply | Error) => void) | null = null;
  #failure: Error | null = null;

  constructor(socket: Socket) {
    socket.on('data', (d: Buffer) => {
      try {
        for (const r of this.#reader.push(d)) this.#push({ code: r.code, text: r.lines.join(' / ') });
      } catch (err) {
        this.#fail(err as Error);
      }
    });
    socket.on('error', (err) => this.#fail(err));
    socket.on('close', () => this.#fail(new Error('connection closed')));
  }

  next(): Promise<Reply> {
    const ready = this.#ready.shift();
    if (ready) return Promise.resolve(ready);
    if (this.#failure) return Promise.reject(this.#failure);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => this.#fail(new Error(`no reply within ${REPLY_TIMEOUT_MS} ms`)), REPLY_TIMEOUT_MS);
      this.#waiter = (r) => {
        clearTimeout(timer);
        if (r instanceof Error) reject(r);
        else resolve(r);
      };
    });
  }

  #push(reply: Reply): void {
    const w = this.#waiter;
    this.#waiter = null;
    if (w) w(reply);
    else this.#ready.push(reply);
  }

  #fail(err: Error): void {
    this.#failure ??= err;
    const w = this.#waiter;
    this.#waiter = null;
    w?.(err);
  }
}

interface Connection { socket: Socket; replies: Replies }

const [host, portArg, messagesArg, sessionsArg, bytesArg, reuseArg, pipeliningArg = '1', recipientsArg = '1'] = process.argv.slice(2);
if (reuseArg === undefined || !['0', '1'].includes(pipeliningArg)) {
  process.stderr.write('usage: pipelined-load <host> <port> <messages> <sessions> <bytes> <reuse 0|1> [pipelining 1|0]\n');
  process.exit(1);
}
const port = Number(portArg);
const messages = Number(messagesArg);
const reuse = reuseArg === '1';
const pipelining = pipeliningArg === '1';
const recipients = Math.max(1, Number(recipientsArg) || 1);

const filler = 'Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor.\r\n';
function body(n: number): Buffer {
  const head = `From: <load@legacy.test>\r\nTo: <sink@dest.test>\r\nSubject: load ${n}\r\nMessage-ID: <load.${n}.${process.pid}@legacy.test>\r\n\r\n`;
  return Buffer.from(head + filler.repeat(Math.max(1, Math.ceil((Number(bytesArg) - head.length) / filler.length))) + '.\r\n');
}

const latencies: number[] = [];
const failures: string[] = [];
const greetings: Record<string, number> = {};
const finals: Record<string, number> = {};
let failed = 0;
let nextMessage = 0;
let lastFinal = 0;

function fail(what: string): void {
  failed++;
  if (failures.length < FAILURES_KEPT) failures.push(what);
}

async function open(): Promise<Connection> {
  const socket = connect({ host, port });
  socket.setNoDelay(true);
  const replies = new Replies(socket);
  try {
    const greeting = await replies.next();
    // The greeting names whoever answered: the proxy or the destination itself.
    greetings[greeting.text] = (greetings[greeting.text] ?? 0) + 1;
    if (greeting.code !== 220) throw new Error(`greeting: ${greeting.code} ${greeting.text}`);
    socket.write('EHLO legacy.test\r\n');
    const ehlo = await replies.next();
    if (ehlo.code !== 250) throw new Error(`EHLO: ${ehlo.code} ${ehlo.text}`);
    if (pipelining && !/\bPIPELINING\b/i.test(ehlo.text)) throw new Error('the server does not offer PIPELINING');
  } catch (err) {
    // A connection given up on while opening is closed: left open, it kept the generator from exiting.
    socket.destroy();
    throw err;
  }
  return { socket, replies };
}

async function quit(c: Connection): Promise<void> {
  c.socket.write('QUIT\r\n');
  await c.replies.next().catch(() => undefined);
  c.socket.destroy();
}

/** One transaction; true when it was accepted. */
async function transaction(c: Connection, n: number): Promise<boolean> {
  const started = performance.now();
  const rcpts = Array.from({ length: recipients }, (_, i) => `RCPT TO:<sink${n}${i === 0 ? '' : `.${i}`}@dest.test>`);
  const commands = ['MAIL FROM:<load@legacy.test>', ...rcpts, 'DATA'];
  const replies: Reply[] = [];
  if (pipelining) {
    c.socket.write(commands.map((line) => `${line}\r\n`).join(''));
    for (let i = 0; i < commands.length; i++) replies.push(await c.replies.next());
  } else {
    // Lockstep: the next command only after this one's reply, and none after a refusal.
    for (const [i, line] of commands.entries()) {
      c.socket.write(`${line}\r\n`);
      const reply = await c.replies.next();
      replies.push(reply);
      if (reply.code !== (i === commands.length - 1 ? 354 : 250)) break;
    }
  }
  const [mail, ...rest] = replies;
  const data = replies.length === commands.length ? replies.at(-1) : undefined;
  const refused = rest.slice(0, recipients).find((r) => r.code !== 250);
  if (data?.code !== 354 || refused) {
    const said = (r: Reply | undefined) => (r ? `${r.code} ${r.text}` : 'not sent');
    fail(`MAIL ${said(mail)}, RCPT ${said(refused ?? rest[0])}, DATA ${said(data)}`);
    return false;
  }
  c.socket.write(body(n));
  const final = await c.replies.next();
  lastFinal = performance.now();
  finals[`${final.code} ${final.text}`] = (finals[`${final.code} ${final.text}`] ?? 0) + 1;
  if (final.code !== 250) {
    fail(`end of data: ${final.code} ${final.text}`);
    return false;
  }
  latencies.push(Math.round((performance.now() - started) * 100) / 100);
  return true;
}

async function session(): Promise<void> {
  let c: Connection | null = null;
  while (nextMessage < messages) {
    const n = nextMessage++;
    try {
      c ??= await open();
      const accepted = await transaction(c, n);
      // After a refused transaction the connection's state is uncertain: start over.
      if (!reuse || !accepted) {
        await quit(c);
        c = null;
      }
    } catch (err) {
      fail((err as Error).message);
      c?.socket.destroy();
      c = null;
    }
  }
  if (c) await quit(c);
}

const t0 = performance.now();
await Promise.all(Array.from({ length: Number(sessionsArg) }, () => session()));
const elapsedMs = Math.round(lastFinal - t0);
process.stdout.write(`${JSON.stringify({ accepted: latencies.length, failed, failures, greetings, finals, elapsedMs, latencies })}\n`);
