/*
 * The transcript of one outbound SMTP/LMTP session: every command Ichidan sent and every reply it
 * got, in order, each with its direction, a timestamp in milliseconds and the queue id of the
 * message it belonged to, plus one summary row for the connection.
 *
 * Takes: the wire log of an SmtpConnection (smtp/smtp-connection.ts: `tnx: 'client'` for each
 *   command as written, `tnx: 'server'` for each complete reply, multi-line replies joined by
 *   "\n"), its network record (addresses), its byte count of the DATA payload, the errors that
 *   end a session, and its 'end' event. The caller says which message (queue id, tenant,
 *   recipients) the session carries from now on; one session may carry many.
 * Gives: chunks to a `TranscriptSink` — the connection row as it stands, the lines and message
 *   links recorded since the previous chunk — after each message and when the session ends.
 *   The sink stores them (queue/ writes them to SQLite); delivery/ holds no storage of its own.
 * Never recorded: the message itself (DATA gives "DATA", the 354, one "<N bytes>" client line
 *   and the final reply; body lines logged as `tnx: 'message'` debug entries are ignored), and
 *   AUTH secrets (the argument of AUTH and every client line of the exchange that follows, up to
 *   the first reply that is not a 334 challenge, are masked here whatever the client logged).
 * Bounded: past `maxBytes` of stored text, lines are still counted but no longer stored, and
 *   the connection row says the transcript was truncated.
 * Ids: sessions are numbered like queue ids (time-ordered, unique within the process, never
 *   equal to a queue id), so `ORDER BY id` is the order they were opened in.
 * Settings: delivery.transcripts.* (read by the caller: the switch and the size cap).
 */
import { format } from 'node:util';
import type { TLSSocket } from 'node:tls';
import { newQueueId } from '../base/base-queue-id.js';
import type { SmtpConnection, WireLogger } from './smtp/smtp-connection.js';

export type Direction = 'client' | 'server';

export interface TranscriptLine {
  /** Position in the session, from 1; counts every line, stored or not. */
  seq: number;
  at: number;
  dir: Direction;
  /** The message the line belongs to; null for greeting, EHLO, STARTTLS, RSET between messages, QUIT. */
  queueId: string | null;
  text: string;
}

export interface TranscriptMessage {
  /** Position among the messages the session carried, from 1. */
  n: number;
  at: number;
  queueId: string;
  tenant: string;
  recipients: string[];
}

export interface TranscriptConnection {
  id: string;
  startedAt: number;
  endedAt: number | null;
  /** The next hop's name (MX host or route host). */
  host: string;
  protocol: 'smtp' | 'lmtp';
  address: string;
  port: number;
  localAddress: string | null;
  localPort: number | null;
  /** "TLSv1.3 TLS_AES_256_GCM_SHA384" after STARTTLS; null in plaintext. */
  tls: string | null;
  helo: string;
  /** The tenant of the first message, for whose delivery the session was opened. */
  tenant: string | null;
  messages: number;
  /** Client commands sent (the "<N bytes>" of a DATA payload is not one). */
  commands: number;
  /** Lines seen in both directions, stored or not. */
  lines: number;
  bytesStored: number;
  truncated: boolean;
  /** How it ended: "quit", the error that ended it, or "closed"; null while open. */
  ended: string | null;
}

export interface TranscriptChunk {
  connection: TranscriptConnection;
  lines: TranscriptLine[];
  messages: TranscriptMessage[];
}

export type TranscriptSink = (chunk: TranscriptChunk) => void;

export interface TranscriptInit {
  host: string;
  protocol: 'smtp' | 'lmtp';
  address: string;
  port: number;
  helo: string;
  maxBytes: number;
  /**
   * The message the session is opened for: should the session end before it carried any (a
   * refused connection, a timeout, a failed TLS handshake, a refused greeting), it is tied to
   * this one, so the message's sessions show why it did not go.
   */
  openedFor?: { queueId: string; tenant: string; recipients: string[] };
}

const MASK = '****';

export class Transcript {
  readonly logger: WireLogger;
  readonly #row: TranscriptConnection;
  readonly #maxBytes: number;
  #lines: TranscriptLine[] = [];
  #messages: TranscriptMessage[] = [];
  #queueId: string | null = null;
  #lastAt = 0;
  #connected = false;
  /** Inside an AUTH exchange: client lines are credentials until a reply other than 334 ends it. */
  #inAuth = false;
  #quitSent = false;
  #error: string | null = null;
  #peerClosedIdle = false;
  #socketOf: () => TLSSocket | null = () => null;
  readonly #openedFor: TranscriptInit['openedFor'];

  constructor(init: TranscriptInit, private readonly sink: TranscriptSink, private readonly clock: () => number = Date.now) {
    this.#maxBytes = init.maxBytes;
    this.#openedFor = init.openedFor;
    const now = this.#now();
    this.#row = {
      id: newQueueId(now), startedAt: now, endedAt: null, host: init.host, protocol: init.protocol, address: init.address, port: init.port,
      localAddress: null, localPort: null, tls: null, helo: init.helo, tenant: null,
      messages: 0, commands: 0, lines: 0, bytesStored: 0, truncated: false, ended: null,
    };
    const ignore = () => undefined;
    this.logger = {
      trace: ignore,
      fatal: (entry) => this.#onError(entry),
      error: (entry) => this.#onError(entry),
      warn: (entry) => this.#onError(entry),
      info: (entry, message, ...args) => this.#onInfo(entry, message, args),
      debug: (entry, message) => this.#onDebug(entry, message),
    };
  }

  /** The session's id (the transcript's, and the attempts' `session`). */
  get id(): string {
    return this.#row.id;
  }

  /** Follows the connection to its end, and reads the TLS parameters from its socket after STARTTLS. */
  watch(conn: SmtpConnection): void {
    this.#socketOf = () => {
      const socket = conn.socket;
      return socket && 'encrypted' in socket && socket.encrypted ? socket : null;
    };
    conn.once('end', () => this.end());
  }

  /** From now on the session carries this message; the lines that follow are tied to it. */
  carry(queueId: string, tenant: string, recipients: string[]): void {
    this.#queueId = queueId;
    this.#row.tenant ??= tenant;
    this.#row.messages++;
    this.#messages.push({ n: this.#row.messages, at: this.#now(), queueId, tenant, recipients });
  }

  /** The message is done with: hands over what was recorded; later lines (RSET, QUIT) belong to no message. */
  release(): void {
    this.#queueId = null;
    // Nothing new since the last chunk (a session handed back twice): no chunk, no rewrite of its row.
    if (this.#lines.length > 0 || this.#messages.length > 0) this.#flush();
  }

  /** The session is over (the connection's 'end'); idempotent. */
  end(): void {
    if (this.#row.endedAt !== null) return;
    this.#row.endedAt = this.#now();
    this.#row.ended = this.#error ?? (this.#quitSent ? 'quit' : this.#peerClosedIdle ? 'closed by the peer while idle' : 'closed');
    if (this.#row.messages === 0 && this.#openedFor) {
      const { queueId, tenant, recipients } = this.#openedFor;
      this.carry(queueId, tenant, recipients);
      this.#queueId = null;
    }
    // A connection never established is kept only when it was opened for a message: its row says why it failed.
    if (this.#connected || this.#openedFor) this.#flush(true);
  }

  #flush(ended = false): void {
    if (!this.#connected && !ended) return;
    const chunk = { connection: { ...this.#row }, lines: this.#lines, messages: this.#messages };
    this.#lines = [];
    this.#messages = [];
    this.sink(chunk);
  }

  /** Milliseconds that never go back, so that the stored order and the timestamps agree. */
  #now(): number {
    this.#lastAt = Math.max(this.#lastAt, this.clock());
    return this.#lastAt;
  }

  #record(dir: Direction, text: string, command = dir === 'client'): void {
    const row = this.#row;
    row.lines++;
    if (command) row.commands++;
    const bytes = Buffer.byteLength(text);
    if (!row.truncated && row.bytesStored + bytes > this.#maxBytes) row.truncated = true;
    if (row.truncated) return;
    row.bytesStored += bytes;
    this.#lines.push({ seq: row.lines, at: this.#now(), dir, queueId: this.#queueId, text });
  }

  #onDebug(entry: Record<string, unknown>, message: string | undefined): void {
    const line = String(message ?? '');
    if (entry.tnx === 'client') {
      if (/^QUIT$/i.test(line)) this.#quitSent = true;
      this.#record('client', this.#mask(line));
    } else if (entry.tnx === 'server') {
      this.#record('server', line);
      if (this.#inAuth && !/^334[ -]/.test(line)) this.#inAuth = false;
    }
  }

  /** AUTH's argument and the client's answers to 334 challenges are credentials. */
  #mask(line: string): string {
    if (this.#inAuth) return MASK;
    const auth = /^AUTH\s+(\S+)(\s+\S.*)?$/i.exec(line);
    if (auth) {
      this.#inAuth = true;
      return auth[2] ? `AUTH ${auth[1]} ${MASK}` : `AUTH ${auth[1]}`;
    }
    return line;
  }

  #onInfo(entry: Record<string, unknown>, message: string | undefined, args: unknown[]): void {
    if (entry.tnx === 'network' && typeof entry.remoteAddress === 'string' && !this.#connected) {
      this.#connected = true;
      this.#row.localAddress = typeof entry.localAddress === 'string' ? entry.localAddress : null;
      this.#row.localPort = typeof entry.localPort === 'number' ? entry.localPort : null;
    } else if (entry.tnx === 'message' && typeof entry.outByteCount === 'number') {
      // The payload as sent (dot-stuffed, terminating dot included): its size only, never its bytes.
      this.#record('client', `<${entry.outByteCount} bytes>`, false);
    } else if (entry.tnx === 'smtp' && /upgraded with STARTTLS/.test(String(message))) {
      const socket = this.#socketOf();
      const cipher = socket?.getCipher();
      this.#row.tls = socket ? [socket.getProtocol(), cipher?.standardName ?? cipher?.name].filter(Boolean).join(' ') : 'STARTTLS';
    } else if (/closed the idle connection/.test(format(String(message), ...args))) {
      this.#peerClosedIdle = true;
    }
  }

  /** Only errors that end the session carry `err`; other warnings are not about the session. */
  #onError(entry: Record<string, unknown>): void {
    if (entry.err instanceof Error) this.#error = failureReason(entry.err);
  }
}

/**
 * A session for `msg` that could not be opened at all (its next hop could not be looked up): one
 * row with no address (port 0), tied to the message, ended by `reason`. Gives its id.
 */
export function unopenedSession(init: Pick<TranscriptInit, 'host' | 'protocol' | 'helo'>, msg: { queueId: string; tenant: string; recipients: Array<{ address: string }> }, reason: string, sink: TranscriptSink): string {
  const openedFor = { queueId: msg.queueId, tenant: msg.tenant, recipients: msg.recipients.map((r) => r.address) };
  const t = new Transcript({ ...init, address: '', port: 0, maxBytes: 0, openedFor }, sink);
  t.logger.error({ err: new Error(reason) });
  t.end();
  return t.id;
}

const NETWORK_FAILURES: Record<string, string> = {
  ECONNREFUSED: 'connection refused',
  EHOSTUNREACH: 'host unreachable',
  ENETUNREACH: 'network unreachable',
  ECONNRESET: 'connection reset',
  EADDRNOTAVAIL: 'local address not available',
  EPIPE: 'connection broken',
};

/**
 * What ended a session (or a connection attempt), in words: "connection refused (ECONNREFUSED)",
 * "TLS handshake failed: …", "connection to 192.0.2.1:25 timed out", not a bare socket error code.
 */
export function failureReason(err: Error): string {
  const e = err as Error & { code?: string; duringTls?: boolean };
  if (e.duringTls && e.code === 'ETIMEDOUT') return /timed out/.test(e.message) ? e.message : `TLS handshake timed out: ${e.message}`;
  if (e.duringTls) return `TLS handshake failed: ${e.message}`;
  const words = e.code === undefined ? undefined : NETWORK_FAILURES[e.code];
  return words ? `${words} (${e.code})` : e.message;
}
