/*
 * Idle SMTP sessions kept open for the next message to the same next hop (address, port,
 * protocol), as Postfix's connection cache does: a session is reused only after a clean
 * transaction, for at most `maxMessages` messages and `idleMs` of idleness. A reused session
 * found dead before the peer read any of the message is not blamed on the destination: the caller
 * opens a fresh one. A session's transcript travels with it through the cache.
 * The egress work grows this into pools per (site, source IP) with per-site limits.
 */
import type SMTPConnection from 'nodemailer/lib/smtp-connection';
import type { Transcript } from './delivery-transcript.js';

interface Idle {
  lease: Lease;
  timer: NodeJS.Timeout;
}

export interface Lease {
  conn: SMTPConnection;
  uses: number;
  reused: boolean;
  transcript: Transcript | null;
}

export class SessionCache {
  readonly #idle = new Map<string, Idle[]>();

  constructor(private readonly idleMs = 2_000, private readonly maxIdlePerKey = 50, private readonly maxMessages = 100) {}

  take(key: string): Lease | undefined {
    const list = this.#idle.get(key);
    while (list && list.length > 0) {
      const idle = list.pop()!;
      clearTimeout(idle.timer);
      const c = idle.lease.conn as unknown as { _destroyed: boolean; _closing: boolean };
      if (!c._destroyed && !c._closing) return { ...idle.lease, reused: true };
    }
    return undefined;
  }

  give(key: string, lease: Lease): void {
    const c = lease.conn as unknown as { _destroyed: boolean; _closing: boolean };
    let list = this.#idle.get(key);
    if (!list) this.#idle.set(key, (list = []));
    if (c._destroyed || c._closing || lease.uses >= this.maxMessages || list.length >= this.maxIdlePerKey) {
      quit(lease.conn);
      return;
    }
    const entry: Idle = {
      lease,
      timer: setTimeout(() => {
        const l = this.#idle.get(key);
        const i = l ? l.indexOf(entry) : -1;
        if (i >= 0) l!.splice(i, 1);
        quit(lease.conn);
      }, this.idleMs),
    };
    entry.timer.unref();
    // Errors on an idle session (the peer closing it) must not crash the process.
    lease.conn.removeAllListeners('error');
    lease.conn.on('error', () => undefined);
    list.push(entry);
  }

  /** QUITs every idle session; resolves when all have ended (their transcripts complete), or after `graceMs`. */
  closeAll(graceMs = 1_000): Promise<void> {
    const ended: Array<Promise<void>> = [];
    for (const list of this.#idle.values()) {
      for (const idle of list) {
        clearTimeout(idle.timer);
        const conn = idle.lease.conn;
        if ((conn as unknown as { _destroyed: boolean })._destroyed) continue;
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
