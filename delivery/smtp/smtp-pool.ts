/*
 * The connection pools: SMTP sessions kept open for the next message to the same next hop, per
 * (site, source address) pair, as Postfix's connection cache does for a destination.
 *
 * A session is reused only after a clean transaction (or a successful RSET), for at most the
 * site's `messagesPerConnection` messages and `idleTimeout` of idleness; its key names the
 * address, port, protocol, TLS level, name and source it was opened with, so a reused session
 * always meets what it was opened for. A reused session found dead before the peer read any of
 * the message is not blamed on the destination: the caller opens a fresh one.
 *
 * Every connection of a pair is counted from its opening to its end, idle and closing ones
 * included: before a new one opens while the pair is at its `maxConnections`, an idle one of the
 * pair is closed first, or one still closing is waited for, so a destination never sees more
 * connections from one source address than the site's limit (the scheduler already keeps
 * deliveries in flight within it). A session's transcript and
 * reply clock travel with it through the pool.
 */
import { EventEmitter } from 'node:events';
import type SMTPConnection from 'nodemailer/lib/smtp-connection';
import type { ReplyClock } from '../delivery-throttle.js';
import type { Transcript } from '../delivery-transcript.js';

interface Idle {
  key: string;
  lease: Lease;
  timer: NodeJS.Timeout;
}

export interface Lease {
  conn: SMTPConnection;
  uses: number;
  reused: boolean;
  transcript: Transcript | null;
  clock: ReplyClock;
  /** The (site, source address) pair whose limits the connection counts against. */
  pair: string;
}

export interface PoolLimits {
  maxConnections: number;
  messagesPerConnection: number;
  idleTimeout: number;
}

/** Closed or closing: nodemailer's connection says so in its own fields, the proxy's client by `ended`. */
function gone(conn: SMTPConnection): boolean {
  const c = conn as unknown as { _destroyed?: boolean; _closing?: boolean; ended?: boolean };
  return c._destroyed === true || c._closing === true || c.ended === true;
}

export class SessionCache {
  readonly #idle = new Map<string, Idle[]>();
  /** Idle sessions per pair, oldest first: the first to close when the pair needs room. */
  readonly #idleByPair = new Map<string, Idle[]>();
  readonly #open = new Map<string, number>();
  /** Emits a pair's name when one of its connections ends. */
  readonly #ended = new EventEmitter().setMaxListeners(0);

  constructor(private readonly maxIdlePerKey = 50) {}

  /** Connections of the pair open now (in use or idle). */
  openCount(pair: string): number {
    return this.#open.get(pair) ?? 0;
  }

  take(key: string): Lease | undefined {
    const list = this.#idle.get(key);
    while (list && list.length > 0) {
      const idle = list.pop()!;
      this.#forget(idle);
      if (!gone(idle.lease.conn)) return { ...idle.lease, reused: true };
    }
    return undefined;
  }

  /** Counts a new connection against its pair until it ends. */
  opened(pair: string, conn: SMTPConnection): void {
    this.#open.set(pair, this.openCount(pair) + 1);
    let counted = true;
    const end = () => {
      if (!counted) return;
      counted = false;
      const n = this.openCount(pair) - 1;
      if (n > 0) this.#open.set(pair, n); else this.#open.delete(pair);
      this.#ended.emit(pair);
    };
    conn.once('end', end);
    conn.once('close', end);
  }

  /**
   * Before opening one more connection for the pair: while it is at `max`, closes its oldest idle
   * session and waits (up to `graceMs`) for that one to end.
   */
  async makeRoom(pair: string, max: number, graceMs = 1_000): Promise<void> {
    const until = Date.now() + graceMs;
    while (this.openCount(pair) >= max && Date.now() < until) {
      const idle = this.#idleByPair.get(pair)?.[0];
      if (!idle) {
        // Connections still saying QUIT (done with their share of messages) count until they end.
        await this.#nextEnd(pair, until - Date.now());
        continue;
      }
      const list = this.#idle.get(idle.key);
      const i = list ? list.indexOf(idle) : -1;
      if (i >= 0) list!.splice(i, 1);
      this.#forget(idle);
      const conn = idle.lease.conn;
      if (gone(conn)) continue;
      await new Promise<void>((resolve) => {
        const timer = setTimeout(() => { conn.close(); resolve(); }, graceMs);
        conn.once('end', () => { clearTimeout(timer); resolve(); });
        quit(conn);
      });
    }
  }

  #nextEnd(pair: string, ms: number): Promise<void> {
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        this.#ended.off(pair, done);
        resolve();
      };
      const timer = setTimeout(done, Math.max(0, ms));
      this.#ended.on(pair, done);
    });
  }

  give(key: string, lease: Lease, limits: PoolLimits): void {
    let list = this.#idle.get(key);
    if (!list) this.#idle.set(key, (list = []));
    if (gone(lease.conn) || lease.uses >= limits.messagesPerConnection || list.length >= this.maxIdlePerKey
      || this.openCount(lease.pair) > limits.maxConnections) {
      quit(lease.conn);
      return;
    }
    const entry: Idle = {
      key,
      lease,
      timer: setTimeout(() => {
        const l = this.#idle.get(key);
        const i = l ? l.indexOf(entry) : -1;
        if (i >= 0) l!.splice(i, 1);
        this.#forget(entry);
        quit(lease.conn);
      }, limits.idleTimeout),
    };
    entry.timer.unref();
    // Errors on an idle session (the peer closing it) must not crash the process.
    lease.conn.removeAllListeners('error');
    lease.conn.on('error', () => undefined);
    list.push(entry);
    let byPair = this.#idleByPair.get(lease.pair);
    if (!byPair) this.#idleByPair.set(lease.pair, (byPair = []));
    byPair.push(entry);
  }

  #forget(idle: Idle): void {
    clearTimeout(idle.timer);
    const byPair = this.#idleByPair.get(idle.lease.pair);
    const i = byPair ? byPair.indexOf(idle) : -1;
    if (i >= 0) byPair!.splice(i, 1);
    if (byPair && byPair.length === 0) this.#idleByPair.delete(idle.lease.pair);
  }

  /** QUITs every idle session; resolves when all have ended (their transcripts complete), or after `graceMs`. */
  closeAll(graceMs = 1_000): Promise<void> {
    const ended: Array<Promise<void>> = [];
    for (const list of this.#idle.values()) {
      for (const idle of list) {
        this.#forget(idle);
        const conn = idle.lease.conn;
        if (gone(conn)) continue;
        ended.push(new Promise((resolve) => conn.once('end', () => resolve())));
        quit(conn);
      }
    }
    this.#idle.clear();
    if (ended.length === 0) return Promise.resolve();
    let timer: NodeJS.Timeout | undefined;
    const grace = new Promise<void>((resolve) => { timer = setTimeout(resolve, graceMs); });
    return Promise.race([Promise.all(ended).then(() => undefined), grace]).finally(() => clearTimeout(timer));
  }
}

export function quit(conn: SMTPConnection): void {
  try {
    conn.quit();
  } catch {
    conn.close();
  }
}
