/*
 * The connection pools: SMTP sessions (smtp-connection.ts) kept open for the next message to the
 * same next hop, per (site, source address) pair, as Postfix's connection cache does for a
 * destination. Queued delivery (delivery-smtp.ts) and the transparent proxy
 * (mta/proxy/proxy-destination.ts) lease from the same pools: `open` a new connection (counted from
 * here), `take` an idle one, `give` it back after a transaction.
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
import type { ReplyClock } from '../delivery-throttle.js';
import type { Transcript } from '../delivery-transcript.js';
import type { SmtpConnection } from './smtp-connection.js';

interface Idle {
  key: string;
  lease: Lease;
  timer: NodeJS.Timeout;
}

export interface Lease {
  conn: SmtpConnection;
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

/** A new connection, connected and greeted, and the connections of its pair open with it (itself included). */
export interface Opened {
  conn: SmtpConnection;
  openWithThis: number;
}

const CLOSE_SETTLE_MS = 100;

export class SmtpPool {
  readonly #idle = new Map<string, Idle[]>();
  /** Idle sessions per pair, oldest first: the first to close when the pair needs room. */
  readonly #idleByPair = new Map<string, Idle[]>();
  /** The connections counted per pair, from before their connect until they end. */
  readonly #conns = new Map<string, Set<SmtpConnection>>();
  /** Emits a pair's name when one of its connections ends. */
  readonly #ended = new EventEmitter().setMaxListeners(0);

  constructor(private readonly maxIdlePerKey = 50) {}

  /** Connections of the pair open now (in use or idle). */
  openCount(pair: string): number {
    return this.#conns.get(pair)?.size ?? 0;
  }

  take(key: string): Lease | undefined {
    const list = this.#idle.get(key);
    while (list && list.length > 0) {
      const idle = list.pop()!;
      this.#forget(idle);
      if (!idle.lease.conn.closing) return { ...idle.lease, reused: true };
    }
    return undefined;
  }

  /**
   * Opens one more connection for the pair once there is room (`makeRoom`), counted against it
   * from before the connect until it ends, and reads its greeting. Rejects as the connect does
   * (the connection has then ended, and is no longer counted).
   */
  async open(pair: string, max: number, create: () => SmtpConnection): Promise<Opened> {
    await this.makeRoom(pair, max);
    const conn = create();
    this.#count(pair, conn);
    const openWithThis = this.openCount(pair);
    await conn.connect();
    return { conn, openWithThis };
  }

  /** Counts a new connection against its pair until it ends. */
  #count(pair: string, conn: SmtpConnection): void {
    let set = this.#conns.get(pair);
    if (!set) this.#conns.set(pair, (set = new Set()));
    set.add(conn);
    let counted = true;
    const end = () => {
      if (!counted) return;
      counted = false;
      set.delete(conn);
      if (set.size === 0 && this.#conns.get(pair) === set) this.#conns.delete(pair);
      this.#ended.emit(pair);
    };
    conn.once('end', end);
  }

  /** Closes idle connections of the pair (waiting for closing ones) until at most `keep` are open. */
  trim(pair: string, keep: number, graceMs = 1_000): Promise<void> {
    return this.makeRoom(pair, keep + 1, graceMs);
  }

  /**
   * Before opening one more connection for the pair: while it is at `max`, closes its oldest idle
   * session and waits (up to `graceMs`) for that one to end; sessions whose QUIT is still unanswered
   * after the grace are closed without waiting more.
   */
  async makeRoom(pair: string, max: number, graceMs = 1_000): Promise<void> {
    const until = Date.now() + graceMs;
    let closed = false;
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
      if (conn.closing) continue;
      await new Promise<void>((resolve) => {
        const timer = setTimeout(() => { conn.close(); resolve(); }, graceMs);
        conn.once('end', () => { clearTimeout(timer); resolve(); });
        void conn.quit();
      });
      closed = true;
    }
    // Sessions still saying QUIT after the grace (a slow destination) are cut short: they must not
    // count at the destination beside the one that replaces them.
    if (this.openCount(pair) >= max) {
      for (const conn of [...(this.#conns.get(pair) ?? [])]) {
        if (!conn.closing || this.openCount(pair) < max) continue;
        const ended = this.#nextEnd(pair, graceMs);
        conn.close();
        await ended;
        closed = true;
      }
    }
    // A destination counts a connection until its own process has seen it end (Postfix's anvil
    // hears of it a moment after the socket closes): the one that replaces it waits that moment.
    if (closed) await new Promise((r) => setTimeout(r, CLOSE_SETTLE_MS));
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
    if (lease.conn.closing || lease.uses >= limits.messagesPerConnection || list.length >= this.maxIdlePerKey
      || this.openCount(lease.pair) > limits.maxConnections) {
      void lease.conn.quit();
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
        void lease.conn.quit();
      }, limits.idleTimeout),
    };
    entry.timer.unref();
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
        if (conn.closing) continue;
        ended.push(new Promise((resolve) => conn.once('end', () => resolve())));
        void conn.quit();
      }
    }
    this.#idle.clear();
    if (ended.length === 0) return Promise.resolve();
    let timer: NodeJS.Timeout | undefined;
    const grace = new Promise<void>((resolve) => { timer = setTimeout(resolve, graceMs); });
    return Promise.race([Promise.all(ended).then(() => undefined), grace]).finally(() => clearTimeout(timer));
  }
}
