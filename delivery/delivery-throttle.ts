/*
 * What an outbound session tells about the destination's attitude toward us: the signal each
 * delivery attempt leaves for the scheduler and the throttle control (queue/queue-egress-control.ts).
 *
 *   throttled  421 at the banner or after any command (the server is closing on us), or a 4xx
 *              whose text speaks of rates, volumes or limits (450, 451, 4.7.x, ...); greylisting
 *              and a transaction's recipient limit are not throttling
 *   capped     a 4xx greeting (before EHLO) that speaks of too many connections, while other
 *              connections of ours to the same (site, source) were open: the destination's cap on
 *              connections per client address (Postfix's smtpd_client_connection_count_limit) is
 *              below the count we had open — a limit to stay under, not a rate to back off from
 *   refused    the connection was refused, or reset by the peer
 *   slow       a reply took longer than the site's `slowReply`, or never came (timeout)
 *   failed     anything else that went wrong (TLS, DNS, a 5xx): no reaction
 *   ok         the transaction ran to its replies
 *
 * Reply times are taken from the connection's wire log (smtp/smtp-connection.ts: every command
 * written and every reply read, in order): the wait of each reply since the command (or the connection) before it. The
 * log is always on for this; when transcripts are on, the same lines also go to the transcript.
 */
import type { WireLogger } from './smtp/smtp-connection.js';

export type SignalKind = 'ok' | 'slow' | 'capped' | 'throttled' | 'refused' | 'failed';

export interface Signal {
  kind: SignalKind;
  /** The reply or error that made it, for the event log. */
  detail: string;
  /** `capped`: connections of the pair open when the refused one was opened (itself included). */
  open?: number;
}

const RATE_WORDING = /\b(rate|rates|too many|too fast|throttl\w*|slow down|exceed\w*|volume|limit\w*|deferred due to|temporarily (deferred|restricted|blocked))\b/i;
const GREYLIST = /grey ?list|gray ?list/i;
/** A transaction's recipient limit (RFC 5321 4.5.3.1.10) asks for another transaction, not for less traffic. */
const RECIPIENT_LIMIT = /\b4\.5\.3\b|too many recipients/i;

/** Is this reply a destination slowing us down? */
export function isThrottleReply(code: number, text: string): boolean {
  if (code === 421) return true;
  if (code < 400 || code >= 500) return false;
  if (GREYLIST.test(text) || RECIPIENT_LIMIT.test(text)) return false;
  return RATE_WORDING.test(text);
}

/** How servers word a refusal of one more connection from an address (Postfix, Exim, Exchange, ...). */
const CONNECTION_CAP_WORDING = /too many (?:concurrent |simultaneous |open )?(?:smtp )?(?:connections|sessions)|(?:concurrent|simultaneous) (?:server )?connections|connection (?:count )?limit|maximum number of (?:concurrent )?connections|concurrency limit/i;

/**
 * The greeting of a connection the destination refused for the number of connections we have
 * open: a 4xx banner in a connection-cap wording, `open` being our connections to the pair when
 * this one opened (itself included). With no other connection of ours open there is no cap to
 * learn (the server turns everyone away): null, and the reply is judged as any other.
 */
export function bannerCapSignal(code: number, text: string, open: number): Signal | null {
  if (code < 400 || code >= 500 || open < 2 || !CONNECTION_CAP_WORDING.test(text)) return null;
  return { kind: 'capped', detail: `${code} ${text.trim()}`.replace(/\s*\r?\n\s*/g, ' / '), open };
}

/** A connection-level error (no reply to read) as a signal. */
export function errorSignal(code: string | undefined, message: string): Signal {
  if (code === 'ECONNREFUSED' || code === 'ECONNRESET' || /ECONNREFUSED|ECONNRESET|EPIPE/.test(message)) return { kind: 'refused', detail: code ?? message };
  if (code === 'ETIMEDOUT' || /timeout/i.test(message)) return { kind: 'slow', detail: `${code ?? 'timeout'}: ${message}` };
  return { kind: 'failed', detail: `${code ?? 'error'}: ${message}` };
}

const RANK: Record<SignalKind, number> = { ok: 0, failed: 1, slow: 2, capped: 3, refused: 4, throttled: 5 };

/** The more telling of two signals. */
export function worse(a: Signal | null, b: Signal): Signal {
  return !a || RANK[b.kind] > RANK[a.kind] ? b : a;
}

/**
 * Watches one connection's transaction log: the slowest reply since the last `reset()`, and every
 * reply that was a throttle. Forwards each entry to `next` (the transcript's logger) as it comes.
 */
export class ReplyClock {
  readonly logger: WireLogger;
  #since: number;
  #slowest = 0;
  #throttle: string | null = null;

  constructor(next: WireLogger | null, private readonly clock: () => number = Date.now) {
    this.#since = clock();
    const watch = (entry: Record<string, unknown>, message?: string, ...args: unknown[]) => {
      const now = this.clock();
      if (entry?.tnx === 'client' || entry?.tnx === 'message') {
        this.#since = now;
      } else if (entry?.tnx === 'server' && typeof message === 'string') {
        this.#slowest = Math.max(this.#slowest, now - this.#since);
        this.#since = now;
        const m = /^(\d{3})[ -]?(.*)$/s.exec(message.split('\n').pop() ?? '');
        if (m && isThrottleReply(Number(m[1]), m[2])) this.#throttle ??= message.replace(/\s*\n\s*/g, ' / ');
      }
    };
    const level = (name: keyof WireLogger) => (entry: Record<string, unknown>, message?: string, ...args: unknown[]) => {
      watch(entry, message, ...args);
      next?.[name](entry, message, ...args);
    };
    this.logger = { trace: level('trace'), debug: level('debug'), info: level('info'), warn: level('warn'), error: level('error'), fatal: level('fatal') };
  }

  /** A new message begins: its replies are judged on their own. */
  reset(): void {
    this.#slowest = 0;
    this.#throttle = null;
  }

  /** The signal of what was seen since `reset()`: a throttle reply, else a slow one, else ok. */
  signal(slowReplyMs: number): Signal {
    if (this.#throttle) return { kind: 'throttled', detail: this.#throttle };
    if (this.#slowest > slowReplyMs) return { kind: 'slow', detail: `a reply took ${this.#slowest} ms (slowReply ${slowReplyMs} ms)` };
    return { kind: 'ok', detail: '' };
  }
}
