/*
 * SpamAssassin's spamd protocol (SPAMC/1.5), the parts Ichidan uses: `SYMBOLS`, `CHECK`,
 * `HEADERS` (only to learn the SpamAssassin version) and `PING`.
 *
 * Takes: a command, the message size and the optional per-user name; the bytes of one reply.
 * Gives: the request head to send before the message, and the reply as data: a result (spam or
 *   not, score, required score, rule names), a refusal (a non-zero EX_ code), or garbled.
 * Protocol: SpamAssassin's spamd/PROTOCOL. A request is `<COMMAND> SPAMC/1.5`, header lines
 *   (`Content-length` is the exact message size, `User` picks per-user preferences), a blank
 *   line, then the message. spamd answers `SPAMD/<version> <code> <text>`: code 0 (EX_OK) with a
 *   `Spam: True|False ; <score> / <required>` header and, for SYMBOLS, a body of comma-separated
 *   rule names; any other code is a sysexits.h value with spamd's reason (a malformed request is
 *   `SPAMD/1.0 76 Bad header line: …`), after which spamd closes. One request per connection:
 *   spamd always closes after its reply, so the whole reply is what arrives before the close.
 *   spamd has no size limit of its own — spamc refuses big messages itself and reports
 *   EX_TOOBIG (866) — so 866 is read as "too large" should a compatible server send it.
 */

export type SpamdCommand = 'SYMBOLS' | 'CHECK' | 'HEADERS';

export const SPAMC_PROTOCOL = 'SPAMC/1.5';

/** spamc's own "message too big" code (libspamc.h), never a sysexits.h value. */
export const EX_TOOBIG = 866;

const EXIT_NAMES: Record<number, string> = {
  64: 'EX_USAGE', 65: 'EX_DATAERR', 66: 'EX_NOINPUT', 67: 'EX_NOUSER', 68: 'EX_NOHOST', 69: 'EX_UNAVAILABLE',
  70: 'EX_SOFTWARE', 71: 'EX_OSERR', 72: 'EX_OSFILE', 73: 'EX_CANTCREAT', 74: 'EX_IOERR', 75: 'EX_TEMPFAIL',
  76: 'EX_PROTOCOL', 77: 'EX_NOPERM', 78: 'EX_CONFIG', 79: 'EX_TIMEOUT', [EX_TOOBIG]: 'EX_TOOBIG',
};

export function exitName(code: number): string {
  return EXIT_NAMES[code] ?? `EX_${code}`;
}

/** The request head; `user` must already be free of control characters (the schema sees to it). */
export function requestHead(command: SpamdCommand, size: number, user?: string): string {
  return `${command} ${SPAMC_PROTOCOL}\r\nContent-length: ${size}\r\n${user ? `User: ${user}\r\n` : ''}\r\n`;
}

export const PING_REQUEST = `PING ${SPAMC_PROTOCOL}\r\n\r\n`;

export interface StatusLine {
  /** As spamd wrote it, e.g. `SPAMD/1.1`. */
  protocol: string;
  code: number;
  text: string;
}

export function parseStatusLine(line: string): StatusLine | null {
  const m = /^(SPAMD\/\d+\.\d+)[ \t]+(\d+)(?:[ \t]+(.*?))?[ \t]*$/.exec(line);
  return m ? { protocol: m[1], code: Number(m[2]), text: m[3] ?? '' } : null;
}

export type SpamdReply =
  | { kind: 'ok'; protocol: string; headers: Map<string, string>; body: string }
  | { kind: 'refused'; protocol: string; code: number; text: string }
  | { kind: 'garbled'; reason: string };

const MAX_SHOWN = 80;
const shown = (text: string) => JSON.stringify(text.length > MAX_SHOWN ? `${text.slice(0, MAX_SHOWN)}…` : text);

/**
 * Splits a whole reply into status, headers (names lower-cased) and body. The body is cut to the
 * reply's `Content-length` when it states one; a body shorter than stated means the connection
 * closed mid-reply.
 */
export function parseReply(bytes: Buffer): SpamdReply {
  const text = bytes.toString('latin1');
  const eol = text.indexOf('\n');
  if (eol < 0) return { kind: 'garbled', reason: `no complete status line in ${shown(text)}` };
  const status = parseStatusLine(text.slice(0, eol).replace(/\r$/, ''));
  if (!status) return { kind: 'garbled', reason: `not a spamd status line: ${shown(text.slice(0, eol))}` };
  if (status.code !== 0) return { kind: 'refused', ...status };

  const rest = text.slice(eol + 1);
  const blank = /\r?\n\r?\n|^\r?\n/.exec(rest);
  if (!blank) return { kind: 'garbled', reason: `reply ends inside its headers: ${shown(rest)}` };
  const headers = new Map<string, string>();
  for (const line of rest.slice(0, blank.index).split(/\r?\n/)) {
    if (line === '') continue;
    const colon = line.indexOf(':');
    if (colon <= 0) return { kind: 'garbled', reason: `bad header line ${shown(line)}` };
    headers.set(line.slice(0, colon).trim().toLowerCase(), line.slice(colon + 1).trim());
  }
  let body = rest.slice(blank.index + blank[0].length);
  const declared = headers.get('content-length');
  if (declared !== undefined) {
    if (!/^\d+$/.test(declared)) return { kind: 'garbled', reason: `bad Content-length ${shown(declared)}` };
    const length = Number(declared);
    if (Buffer.byteLength(body, 'latin1') < length) {
      return { kind: 'garbled', reason: `reply body cut short (${Buffer.byteLength(body, 'latin1')} of ${length} bytes)` };
    }
    body = body.slice(0, length);
  }
  return { kind: 'ok', protocol: status.protocol, headers, body };
}

export interface SpamVerdict {
  spam: boolean;
  score: number;
  threshold: number;
}

const NUMBER = '[-+]?(?:\\d+(?:\\.\\d*)?|\\.\\d+)';
const SPAM_HEADER = new RegExp(`^(True|False|Yes|No)\\s*;\\s*(${NUMBER})\\s*/\\s*(${NUMBER})$`, 'i');

/** `True ; 1000.0 / 5.0` (REPORT_IFSPAM says Yes/No instead of True/False). */
export function parseSpamHeader(value: string): SpamVerdict | null {
  const m = SPAM_HEADER.exec(value.trim());
  if (!m) return null;
  return { spam: /^(true|yes)$/i.test(m[1]), score: Number(m[2]), threshold: Number(m[3]) };
}

/** The SYMBOLS body: rule names separated by commas (spamd adds no spaces; tolerate them). */
export function parseSymbols(body: string): string[] {
  return body.split(',').map((s) => s.trim()).filter((s) => s !== '');
}

/**
 * The SpamAssassin release from a HEADERS reply's `X-Spam-Checker-Version:
 * SpamAssassin 4.0.1 (2024-03-25) on host` (the host part dropped).
 */
export function checkerVersion(headersBody: string): string | null {
  const m = /^X-Spam-Checker-Version:[ \t]*(.+(?:\r?\n[ \t]+.+)*)/im.exec(headersBody);
  if (!m) return null;
  return m[1].replace(/\r?\n[ \t]+/g, ' ').replace(/\s+on\s+\S+\s*$/, '').trim() || null;
}
