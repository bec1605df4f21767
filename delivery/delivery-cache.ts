/*
 * Idle SMTP sessions kept open for the next message to the same next hop (address, port,
 * protocol), as Postfix's connection cache does: a session is reused only after a clean
 * transaction, for at most `maxMessages` messages and `idleMs` of idleness. A reused session
 * found dead before the peer read any of the message is not blamed on the destination: the caller
 * opens a fresh one.
 * The egress work grows this into pools per (site, source IP) with per-site limits.
 */
import type SMTPConnection from 'nodemailer/lib/smtp-connection';

interface Idle {
  conn: SMTPConnection;
  uses: number;
  timer: NodeJS.Timeout;
}

export interface Lease {
  conn: SMTPConnection;
  uses: number;
  reused: boolean;
}

export class SessionCache {
  readonly #idle = new Map<string, Idle[]>();

  constructor(private readonly idleMs = 2_000, private readonly maxIdlePerKey = 50, private readonly maxMessages = 100) {}

  take(key: string): Lease | undefined {
    const list = this.#idle.get(key);
    while (list && list.length > 0) {
      const idle = list.pop()!;
      clearTimeout(idle.timer);
      const c = idle.conn as unknown as { _destroyed: boolean; _closing: boolean };
      if (!c._destroyed && !c._closing) return { conn: idle.conn, uses: idle.uses, reused: true };
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
      conn: lease.conn,
      uses: lease.uses,
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

  closeAll(): void {
    for (const list of this.#idle.values()) {
      for (const idle of list) {
        clearTimeout(idle.timer);
        quit(idle.conn);
      }
    }
    this.#idle.clear();
  }
}

export function quit(conn: SMTPConnection): void {
  try {
    conn.quit();
  } catch {
    conn.close();
  }
}
