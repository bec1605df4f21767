/*
 * The admission benchmark's senders: SMTP clients that each send one message per connection from
 * a chosen loopback address and time it, paced at a steady rate (open loop) or kept at a fixed
 * number in flight (closed loop, to find what a server can take). Plain sockets and a minimal
 * reply parser, so that the load costs the generator little next to the server it measures.
 *
 * Takes: the server's port on 127.0.0.1, a way to pick each message's source address (127.X.Y.Z:
 * all of 127.0.0.0/8 is local, so a sender's network is a 127.X.Y.0/24), the envelope, a reply
 * timeout; for a pacer its rate and the most attempts it may have in flight.
 * Gives: one `Attempt` per message, from the start of connect to the final reply after DATA (or
 * the first refusal or failure): its outcome (accepted 2xx, deferred 4xx, rejected 5xx, failed:
 * connection refused, reset, closed or timed out), the stage it ended at and the reply code.
 * A pacer that finds its in-flight cap full counts the attempt as skipped instead of starting it.
 */
import { setMaxListeners } from 'node:events';
import { connect, type Socket } from 'node:net';

export type Outcome = 'accepted' | 'deferred' | 'rejected' | 'failed';
export type Stage = 'connect' | 'ehlo' | 'mail' | 'rcpt' | 'data' | 'dot';

export interface Attempt {
  /** When the attempt started, ms since the clock's origin (see `Clock`). */
  at: number;
  /** Start of connect to the reply that ended the attempt (or to the failure). */
  ms: number;
  outcome: Outcome;
  stage: Stage;
  code: number | null;
  /** Start of connect to the greeting (when one came). */
  greetMs?: number;
  /** The body's final dot sent to the reply after it (when it was sent): the server's scan and commit. */
  dotMs?: number;
}

export interface Envelope { from: string; to: string; body: string }

/**
 * Milliseconds since the run's origin: every attempt of a run is timed against one. `origin` (the
 * high-resolution time since the epoch another thread's clock started at) shares a run's clock
 * with a worker thread, whose performance.now() counts from its own start.
 */
export class Clock {
  readonly #origin: number;
  constructor(origin?: number) {
    this.#origin = origin === undefined ? performance.now() : origin - performance.timeOrigin;
  }
  /** This clock's origin as a time since the epoch, for `new Clock(origin)` in another thread. */
  get origin(): number { return performance.timeOrigin + this.#origin; }
  now(): number { return performance.now() - this.#origin; }
}

const FILLER = 'Minutes of the weekly planning meeting: the shipment is on schedule and the invoice follows.\r\n';

/** A plain text message of about `size` bytes (headers included), the same for every sender. */
export function messageBody(size: number, from: string, to: string): string {
  const head = [`From: <${from}>`, `To: <${to}>`, 'Subject: weekly planning', 'Date: Sun, 06 Dec 2026 12:00:00 +0000',
    'MIME-Version: 1.0', 'Content-Type: text/plain; charset=us-ascii', '', ''].join('\r\n');
  return head + FILLER.repeat(Math.max(1, Math.ceil((size - head.length) / FILLER.length)));
}

const STAGES_AFTER_EHLO: Stage[] = ['mail', 'rcpt', 'data'];

export interface Target { host: string; port: number }

/**
 * One message over a fresh connection from `localAddress`: greeting, EHLO, then MAIL, RCPT and DATA
 * in one write (both servers offer PIPELINING), the body after 354, QUIT after the final reply.
 * Never rejects: every ending is an Attempt; `cut` ends it at once as failed.
 */
export function sendOne(target: Target, localAddress: string, env: Envelope, clock: Clock, timeoutMs: number, cut?: AbortSignal): Promise<Attempt> {
  const at = clock.now();
  return new Promise((resolve) => {
    let stage: Stage = 'connect';
    let buffer = '';
    let expected: Stage[] = ['connect'];
    let done = false;
    let greetMs: number | undefined, dotSent: number | undefined;
    const socket: Socket = connect({ host: target.host, port: target.port, localAddress });
    const finish = (outcome: Outcome, code: number | null) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      cut?.removeEventListener('abort', onCut);
      const now = clock.now();
      resolve({ at, ms: now - at, outcome, stage, code, greetMs, dotMs: dotSent === undefined ? undefined : now - dotSent });
      if (outcome === 'accepted' || code !== null) {
        socket.end('QUIT\r\n');
        setTimeout(() => socket.destroy(), 1000).unref();
      } else {
        socket.destroy();
      }
    };
    const timer = setTimeout(() => finish('failed', null), timeoutMs);
    const onCut = () => finish('failed', null);
    cut?.addEventListener('abort', onCut, { once: true });
    socket.setNoDelay(true);
    socket.on('error', () => finish('failed', null));
    socket.on('close', () => finish('failed', null));
    socket.on('data', (d: Buffer) => {
      buffer += d.toString('latin1');
      let nl: number;
      while (!done && (nl = buffer.indexOf('\n')) >= 0) {
        const line = buffer.slice(0, nl);
        buffer = buffer.slice(nl + 1);
        if (line[3] === '-') continue; // a multi-line reply goes on
        const code = Number(line.slice(0, 3));
        stage = expected.shift() ?? stage;
        const ok = stage === 'data' ? code === 354 : code >= 200 && code < 300;
        if (!ok) return finish(code >= 400 && code < 500 ? 'deferred' : code >= 500 && code < 600 ? 'rejected' : 'failed', code);
        if (stage === 'connect') {
          greetMs = clock.now() - at;
          expected = ['ehlo'];
          socket.write('EHLO sender.bench.test\r\n');
        } else if (stage === 'ehlo') {
          expected = [...STAGES_AFTER_EHLO];
          socket.write(`MAIL FROM:<${env.from}>\r\nRCPT TO:<${env.to}>\r\nDATA\r\n`);
        } else if (stage === 'data') {
          expected = ['dot'];
          socket.write(env.body + '.\r\n');
          dotSent = clock.now();
        } else if (stage === 'dot') {
          return finish('accepted', code);
        }
      }
    });
  });
}

export interface SenderPlan {
  target: Target;
  /** The source address of the n-th attempt. */
  address: (n: number) => string;
  envelope: (n: number, address: string) => Envelope;
  timeoutMs: number;
}

/**
 * Starts attempts at `rate` a second from now until stopped (catching up in small batches every
 * 10 ms, so the rate holds when a timer fires late), never more than `maxInFlight` at once.
 */
export class Pacer {
  readonly attempts: Attempt[] = [];
  skipped = 0;
  inFlight = 0;
  /** Attempts still in flight when the pacer was stopped and its drain time was over. */
  cut = 0;
  #n = 0;
  readonly #t0: number;
  readonly #timer: NodeJS.Timeout;
  readonly #pending = new Set<Promise<void>>();
  readonly #cut = new AbortController();

  constructor(private readonly plan: SenderPlan, private readonly clock: Clock, readonly rate: number, readonly maxInFlight = Infinity) {
    this.#t0 = clock.now();
    setMaxListeners(Infinity, this.#cut.signal);
    this.#timer = setInterval(() => this.#tick(), 10);
  }

  #tick(): void {
    const due = Math.floor(((this.clock.now() - this.#t0) / 1000) * this.rate);
    while (this.#n < due) {
      const n = this.#n++;
      if (this.inFlight >= this.maxInFlight) {
        this.skipped++;
        continue;
      }
      this.inFlight++;
      const address = this.plan.address(n);
      const p = sendOne(this.plan.target, address, this.plan.envelope(n, address), this.clock, this.plan.timeoutMs, this.#cut.signal).then((a) => {
        this.attempts.push(a);
        this.inFlight--;
        this.#pending.delete(p);
      });
      this.#pending.add(p);
    }
  }

  /** Stops starting attempts; waits up to `drainMs` for those in flight, then ends the rest as failed. */
  async stop(drainMs: number): Promise<void> {
    clearInterval(this.#timer);
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([Promise.all(this.#pending), new Promise((r) => { timer = setTimeout(r, drainMs); })]);
    clearTimeout(timer);
    this.cut = this.#pending.size;
    this.#cut.abort();
    await Promise.all(this.#pending);
  }
}

/**
 * Closed loop: `sessions` senders, each starting its next attempt when the last has ended, for
 * `ms`; gives the attempts that started within that time.
 */
export async function saturate(plan: SenderPlan, clock: Clock, sessions: number, ms: number): Promise<Attempt[]> {
  const attempts: Attempt[] = [];
  const end = clock.now() + ms;
  let n = 0;
  await Promise.all(Array.from({ length: sessions }, async () => {
    while (clock.now() < end) {
      const i = n++;
      const address = plan.address(i);
      attempts.push(await sendOne(plan.target, address, plan.envelope(i, address), clock, plan.timeoutMs));
    }
  }));
  return attempts;
}

/** A known sender's address: `networks` /24s at 127.10.N.0, four hosts each, taken in turn. */
export function knownAddress(networks: number): (n: number) => string {
  return (n) => `127.10.${(n % networks) + 1}.${(Math.floor(n / networks) % 4) + 1}`;
}

/** The flood's addresses: any host of the 16 384 /24s in 127.64.0.0/10, at random. */
export function floodAddress(): string {
  const r = Math.floor(Math.random() * 2 ** 22);
  return `127.${64 + (r >> 16)}.${(r >> 8) & 255}.${1 + ((r & 255) % 254)}`;
}

/** The /24 of an IPv4 address, as "a.b.c". */
export const network24 = (address: string) => address.slice(0, address.lastIndexOf('.'));
