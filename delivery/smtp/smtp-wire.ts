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

/** Adds a dot to every line that begins with one and ends the data with CRLF "." CRLF. */
export async function* dotStuffed(body: Readable): AsyncGenerator<Buffer> {
  let atLineStart = true;
  let lastTwo = '\r\n';
  for await (const raw of body) {
    const chunk = typeof raw === 'string' ? Buffer.from(raw) : raw as Buffer;
    if (chunk.length === 0) continue;
    const parts: Buffer[] = [];
    let from = 0;
    for (let i = 0; i < chunk.length; i++) {
      if (atLineStart && chunk[i] === 0x2e) {
        parts.push(chunk.subarray(from, i), Buffer.from('.'));
        from = i;
      }
      atLineStart = chunk[i] === 0x0a;
    }
    parts.push(chunk.subarray(from));
    lastTwo = (lastTwo + chunk.subarray(Math.max(0, chunk.length - 2)).toString('latin1')).slice(-2);
    yield Buffer.concat(parts);
  }
  yield Buffer.from(lastTwo === '\r\n' ? '.\r\n' : '\r\n.\r\n');
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
