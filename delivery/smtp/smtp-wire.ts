/*
 * The SMTP wire format, both ways: reply bytes cut into whole `Reply` values (multi-line replies
 * joined, RFC 5321 4.2), a message body dot-stuffed with its final dot (RFC 5321 4.5.2), and
 * ESMTP parameter values as xtext (RFC 3461 4). No sockets here: smtp-connection.ts uses these,
 * and so do the tests' own SMTP peers.
 */
import type { Readable } from 'node:stream';
import type { SmtpReply } from '../../base/base-reply.js';

export interface Reply {
  code: number;
  /** The lines as received, without their code and separator. */
  lines: string[];
  /** The whole reply as it would be sent on: "250-first\r\n250 last". */
  raw: string;
}

/** A catalogue reply (base/base-reply.ts) in its wire form, to say on a relayed session. */
export function toReply(r: SmtpReply): Reply {
  const text = `${r.enhanced} ${r.text}`;
  return { code: r.code, lines: [text], raw: `${r.code} ${text}` };
}

/** A failure without a reply; `duringTls`: it broke the TLS handshake after STARTTLS. */
export type ConnectionError = Error & { code: string; duringTls?: boolean };

const MAX_REPLY_LINES = 100;
const MAX_LINE = 4096;

export function replyText(r: Reply): string {
  return r.lines.join(' / ');
}

/** The reply as one string, its lines joined by "\n", as the wire log and the outcomes carry it. */
export function replyString(r: Reply): string {
  return r.raw.replace(/\r\n/g, '\n');
}

/** RFC 3461 xtext: "+", "=" and bytes outside 33–126 as +XX. */
export function xtext(value: string): string {
  return Buffer.from(value, 'utf8').reduce((out, b) => out + (b < 33 || b > 126 || b === 0x2b || b === 0x3d ? `+${b.toString(16).toUpperCase().padStart(2, '0')}` : String.fromCharCode(b)), '');
}

export function connectionError(message: string, code: string, extra: Partial<ConnectionError> = {}): ConnectionError {
  return Object.assign(new Error(message), { code }, extra);
}

const DOT = Buffer.from('.');
const LF = 0x0a;
const PERIOD = 0x2e;

/**
 * Adds a dot to every line that begins with one and ends the data with CRLF "." CRLF. Jumps from
 * line feed to line feed, and passes a chunk on as it is when no line in it begins with a dot.
 */
export async function* dotStuffed(body: Readable): AsyncGenerator<Buffer> {
  let atLineStart = true;
  /** The last two bytes sent (CR LF before anything is sent: an empty body needs no extra line end). */
  let beforeLast = 0x0d;
  let last = LF;
  for await (const raw of body) {
    const chunk = typeof raw === 'string' ? Buffer.from(raw) : raw as Buffer;
    if (chunk.length === 0) continue;
    let parts: Buffer[] | null = null;
    let from = 0;
    // i: the start of the next line in this chunk, -1 when there is none.
    let i = atLineStart ? 0 : chunk.indexOf(LF);
    if (!atLineStart && i >= 0) i += 1;
    while (i >= 0 && i < chunk.length) {
      if (chunk[i] === PERIOD) {
        (parts ??= []).push(chunk.subarray(from, i), DOT);
        from = i;
      }
      const next = chunk.indexOf(LF, i);
      i = next < 0 ? -1 : next + 1;
    }
    atLineStart = chunk[chunk.length - 1] === LF;
    beforeLast = chunk.length > 1 ? chunk[chunk.length - 2] : last;
    last = chunk[chunk.length - 1];
    if (parts === null) { yield chunk; continue; }
    parts.push(chunk.subarray(from));
    yield Buffer.concat(parts);
  }
  yield Buffer.from(beforeLast === 0x0d && last === LF ? '.\r\n' : '\r\n.\r\n');
}

/**
 * Cuts a stream of reply bytes into whole replies ("250-a", "250 b" make one); a line that is not
 * a reply line, or too many or too long lines, is a protocol error.
 */
export class ReplyReader {
  #buffer = '';
  #lines: string[] = [];

  /** The replies completed by this chunk, in order. */
  push(chunk: Buffer): Reply[] {
    this.#buffer += chunk.toString('latin1');
    const done: Reply[] = [];
    let nl: number;
    while ((nl = this.#buffer.indexOf('\n')) >= 0) {
      const line = this.#buffer.slice(0, nl).replace(/\r$/, '');
      this.#buffer = this.#buffer.slice(nl + 1);
      this.#lines.push(line);
      if (this.#lines.length > MAX_REPLY_LINES) throw connectionError('reply too long', 'EPROTOCOL');
      if (/^\d{3}(?: |$)/.test(line)) {
        const lines = this.#lines;
        this.#lines = [];
        done.push({ code: Number(line.slice(0, 3)), lines: lines.map((l) => l.slice(4)), raw: lines.join('\r\n') });
      } else if (!/^\d{3}-/.test(line)) {
        throw connectionError(`not an SMTP reply: ${line.slice(0, 80)}`, 'EPROTOCOL');
      }
    }
    if (this.#buffer.length > MAX_LINE) throw connectionError('reply line too long', 'EPROTOCOL');
    return done;
  }
}
