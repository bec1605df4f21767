/*
 * ICAP (RFC 3507) on the wire, the parts a mail scanner needs: OPTIONS, RESPMOD with preview, the
 * reply and its encapsulated HTTP message, and HTTP/1.1 chunked transfer coding both ways.
 *
 * Takes: a connected socket's bytes (pushed into a `ByteReader` as they arrive, in whatever
 *   pieces TCP delivers them) and, for RESPMOD, the message as a stream.
 * Gives: parsed replies (`IcapReply`: status, ICAP header fields, the encapsulated HTTP response
 *   header, and the encapsulated body's length, SHA-256 and first bytes — never the whole body),
 *   request heads, and the threat name a reply carries, whichever vendor convention it uses.
 * Protocol: RFC 3507 §4.3 (ICAP header, `Encapsulated` offsets), §4.5 (preview, `0; ieof`,
 *   `100 Continue`), §4.6 (`Allow: 204`), §4.10 (OPTIONS); RFC 9112 §7.1 (chunked coding, chunk
 *   extensions, trailers); header field folding as in RFC 822, which c-icap uses for
 *   `X-Violations-Found`. Threat names: `X-Infection-Found: ...; Threat=NAME;`
 *   (draft-stecher-icap-subid), `X-Violations-Found` (the same draft; Symantec), `X-Virus-ID` and
 *   `X-Virus-Name` (McAfee, Kaspersky, ESET and others).
 * Every malformed byte sequence is an `IcapProtocolError`; a connection that ends before the
 * reply is whole is an `IcapClosedError` (a transport failure, not a protocol one).
 */
import { createHash } from 'node:crypto';
import type { Socket } from 'node:net';
import type { Readable } from 'node:stream';

const CRLF = '\r\n';
const CRLF_BYTES = Buffer.from(CRLF, 'latin1');
/** Longest header line, and longest header block (ICAP or encapsulated) accepted from a server. */
const MAX_LINE = 16 * 1024;
const MAX_HEAD = 64 * 1024;
/** First bytes of an encapsulated body kept for reading a threat name out of a block page. */
const BODY_SAMPLE = 8 * 1024;

export const LAST_CHUNK = Buffer.from(`0${CRLF}${CRLF}`, 'latin1');
export const IEOF_CHUNK = Buffer.from(`0; ieof${CRLF}${CRLF}`, 'latin1');

export class IcapProtocolError extends Error {}
export class IcapClosedError extends Error {}

/**
 * Bytes from a socket, read by the parsers at their own pace. Reads resolve as soon as enough
 * bytes are there and reject once the source has ended without them.
 */
export class ByteReader {
  #buf: Buffer = Buffer.alloc(0);
  #ended: Error | null = null;
  #wake: (() => void) | null = null;

  push(chunk: Buffer): void {
    this.#buf = this.#buf.length === 0 ? chunk : Buffer.concat([this.#buf, chunk]);
    this.#notify();
  }

  /** No more bytes will come; `cause` says why when it was an error. The first call wins. */
  end(cause?: Error): void {
    this.#ended ??= cause ?? new IcapClosedError('connection closed before the reply was complete');
    this.#notify();
  }

  /** One line without its CRLF; a line longer than `max` is a protocol error. */
  async readLine(max = MAX_LINE): Promise<string> {
    let from = 0;
    for (;;) {
      const at = this.#buf.indexOf(CRLF_BYTES, from);
      if (at >= 0) {
        if (at > max) break;
        const line = this.#buf.toString('latin1', 0, at);
        this.#buf = this.#buf.subarray(at + 2);
        return line;
      }
      if (this.#buf.length > max) break;
      from = Math.max(0, this.#buf.length - 1);
      await this.#more();
    }
    throw new IcapProtocolError(`header line longer than ${max} bytes`);
  }

  /** Exactly `n` bytes. */
  async read(n: number): Promise<Buffer> {
    while (this.#buf.length < n) await this.#more();
    const out = this.#buf.subarray(0, n);
    this.#buf = this.#buf.subarray(n);
    return out;
  }

  /** Between 1 and `max` bytes, as soon as any are there. */
  async readSome(max: number): Promise<Buffer> {
    while (this.#buf.length === 0) await this.#more();
    return this.read(Math.min(max, this.#buf.length));
  }

  #more(): Promise<void> {
    if (this.#ended) return Promise.reject(this.#ended);
    return new Promise((resolve) => { this.#wake = resolve; });
  }

  #notify(): void {
    const wake = this.#wake;
    this.#wake = null;
    wake?.();
  }
}

/** Feeds a socket into a reader: data as it comes, its end or its error as the end. */
export function readerFor(socket: Socket): ByteReader {
  const reader = new ByteReader();
  socket.on('data', (chunk: Buffer) => reader.push(chunk));
  socket.on('end', () => reader.end());
  socket.on('close', () => reader.end());
  socket.on('error', (err) => reader.end(err));
  return reader;
}

/** Header fields by lower-case name; a folded value keeps its continuation lines split by '\n'. */
export class HeaderFields {
  readonly #fields = new Map<string, string>();

  constructor(lines: string[]) {
    let last: string | null = null;
    for (const line of lines) {
      if (/^[ \t]/.test(line)) {
        if (last === null) throw new IcapProtocolError(`continuation line before any header field: "${line.slice(0, 60)}"`);
        this.#fields.set(last, `${this.#fields.get(last)}\n${line.trim()}`);
        continue;
      }
      const colon = line.indexOf(':');
      if (colon <= 0 || !/^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/.test(line.slice(0, colon))) {
        throw new IcapProtocolError(`malformed header field "${line.slice(0, 60)}"`);
      }
      last = line.slice(0, colon).toLowerCase();
      const value = line.slice(colon + 1).trim();
      // A repeated field is one list-valued field (RFC 9110 §5.3).
      this.#fields.set(last, this.#fields.has(last) ? `${this.#fields.get(last)}, ${value}` : value);
    }
  }

  /** The value with folding undone (continuation lines joined by a space). */
  get(name: string): string | undefined {
    return this.#fields.get(name.toLowerCase())?.replace(/\n/g, ' ');
  }

  /** The value's physical lines, for fields whose folding carries structure. */
  lines(name: string): string[] {
    return this.#fields.get(name.toLowerCase())?.split('\n') ?? [];
  }
}

export interface HttpHead {
  status: number;
  reason: string;
  headers: HeaderFields;
}

export interface EncapsulatedBody {
  length: number;
  sha256: string;
  /** The first bytes, for finding a threat name in a block page. */
  sample: Buffer;
}

export interface IcapReply {
  status: number;
  reason: string;
  headers: HeaderFields;
  /** The encapsulated HTTP response header (`res-hdr`), when there is one. */
  http: HttpHead | null;
  /** The encapsulated body (`res-body`, `req-body` or `opt-body`), when there is one. */
  body: EncapsulatedBody | null;
}

async function readHeaderLines(reader: ByteReader): Promise<string[]> {
  const lines: string[] = [];
  let total = 0;
  for (;;) {
    const line = await reader.readLine();
    if (line === '') return lines;
    total += line.length + 2;
    if (total > MAX_HEAD) throw new IcapProtocolError(`header block longer than ${MAX_HEAD} bytes`);
    lines.push(line);
  }
}

/** `Encapsulated: req-hdr=0, res-hdr=45, res-body=120` → its entries in order (RFC 3507 §4.4.1). */
export function parseEncapsulated(value: string): Array<{ name: string; offset: number }> {
  const entries = value.split(',').map((part) => {
    const m = /^\s*(req-hdr|res-hdr|req-body|res-body|null-body|opt-body)=(\d+)\s*$/i.exec(part);
    if (!m) throw new IcapProtocolError(`malformed Encapsulated header "${value}"`);
    return { name: m[1].toLowerCase(), offset: Number(m[2]) };
  });
  const ordered = entries.every((e, i) => (i === 0 ? e.offset === 0 : e.offset >= entries[i - 1].offset));
  const headersFirst = entries.every((e, i) => e.name.endsWith('-hdr') === (i < entries.length - 1));
  if (!ordered || !headersFirst) throw new IcapProtocolError(`inconsistent Encapsulated header "${value}"`);
  return entries;
}

function parseHttpHead(section: Buffer): HttpHead {
  const lines = section.toString('latin1').split(CRLF);
  const m = /^HTTP\/1\.[01] (\d{3})(?: (.*))?$/.exec(lines[0]);
  if (!m || lines.at(-1) !== '' || lines.at(-2) !== '') {
    throw new IcapProtocolError(`malformed encapsulated HTTP response header "${lines[0].slice(0, 60)}"`);
  }
  return { status: Number(m[1]), reason: m[2] ?? '', headers: new HeaderFields(lines.slice(1, -2)) };
}

/**
 * Reads one chunked body up to and including its last chunk and trailers, handing each piece of
 * data to `sink` as it arrives. Returns the last chunk's extensions (e.g. "ieof").
 */
export async function readChunked(reader: ByteReader, sink: (piece: Buffer) => void): Promise<string> {
  for (;;) {
    const line = await reader.readLine(1024);
    const m = /^([0-9a-fA-F]{1,8})[ \t]*(?:;(.*))?$/.exec(line);
    if (!m) throw new IcapProtocolError(`malformed chunk size line "${line.slice(0, 60)}"`);
    let remaining = parseInt(m[1], 16);
    if (remaining === 0) {
      await readHeaderLines(reader);
      return (m[2] ?? '').trim();
    }
    while (remaining > 0) {
      const piece = await reader.readSome(Math.min(remaining, 64 * 1024));
      remaining -= piece.length;
      sink(piece);
    }
    if (!(await reader.read(2)).equals(CRLF_BYTES)) throw new IcapProtocolError('chunk data not followed by CRLF');
  }
}

/**
 * Reads one ICAP reply. A `100 Continue` is returned as it is (it has no encapsulated part);
 * any other reply is read to its end, its body digested and discarded as it streams by.
 */
export async function readReply(reader: ByteReader): Promise<IcapReply> {
  const statusLine = await reader.readLine(1024);
  const m = /^ICAP\/1\.0 (\d{3})(?: (.*))?$/.exec(statusLine);
  if (!m) throw new IcapProtocolError(`not an ICAP status line: "${statusLine.slice(0, 60)}"`);
  const status = Number(m[1]);
  const headers = new HeaderFields(await readHeaderLines(reader));
  const reply: IcapReply = { status, reason: m[2] ?? '', headers, http: null, body: null };
  const encapsulated = headers.get('encapsulated');
  if (status === 100 || encapsulated === undefined) return reply;

  const entries = parseEncapsulated(encapsulated);
  const bodyEntry = entries.at(-1)!;
  if (bodyEntry.offset > MAX_HEAD) throw new IcapProtocolError(`encapsulated headers longer than ${MAX_HEAD} bytes`);
  const sections = await reader.read(bodyEntry.offset);
  entries.forEach((entry, i) => {
    if (entry.name === 'res-hdr') reply.http = parseHttpHead(sections.subarray(entry.offset, entries[i + 1].offset));
  });
  if (bodyEntry.name !== 'null-body') {
    const hash = createHash('sha256');
    const sample: Buffer[] = [];
    let length = 0;
    await readChunked(reader, (piece) => {
      hash.update(piece);
      if (length < BODY_SAMPLE) sample.push(piece.subarray(0, BODY_SAMPLE - length));
      length += piece.length;
    });
    reply.body = { length, sha256: hash.digest('hex'), sample: Buffer.concat(sample) };
  }
  return reply;
}

export interface IcapTarget {
  host: string;
  port: number;
  service: string;
}

/** `host:port` as the request URI and the Host field write it (IPv6 in brackets). */
function authority(target: IcapTarget): string {
  return `${target.host.includes(':') ? `[${target.host}]` : target.host}:${target.port}`;
}

export function serviceUri(target: IcapTarget): string {
  return `icap://${authority(target)}/${target.service}`;
}

/** Each request travels on its own connection, so every one says so. */
export function optionsRequest(target: IcapTarget): Buffer {
  return Buffer.from([
    `OPTIONS ${serviceUri(target)} ICAP/1.0`, `Host: ${authority(target)}`, 'User-Agent: Ichidan',
    'Encapsulated: null-body=0', 'Connection: close', '', '',
  ].join(CRLF), 'latin1');
}

export interface RespmodParams {
  target: IcapTarget;
  /** Host name of the synthetic HTTP exchange: this MTA's own. */
  httpHost: string;
  /** The synthetic URL's path, naming the queued message. */
  path: string;
  contentLength: number;
  /** Bytes in the preview, or null to send no preview. */
  preview: number | null;
  allow204: boolean;
  clientIp: string;
}

/**
 * The ICAP header and the encapsulated HTTP request and response headers: the message is
 * presented as the body of a `200 OK` answer to a GET, which is what RESPMOD scanners expect.
 */
export function respmodHead(p: RespmodParams): Buffer {
  const reqHdr = [`GET http://${p.httpHost}${p.path} HTTP/1.1`, `Host: ${p.httpHost}`, '', ''].join(CRLF);
  const resHdr = ['HTTP/1.1 200 OK', 'Content-Type: message/rfc822', `Content-Length: ${p.contentLength}`, '', ''].join(CRLF);
  const icap = [
    `RESPMOD ${serviceUri(p.target)} ICAP/1.0`, `Host: ${authority(p.target)}`, 'User-Agent: Ichidan',
    // A de facto extension most ICAP servers log and some use in their policy.
    `X-Client-IP: ${p.clientIp}`,
    ...(p.allow204 ? ['Allow: 204'] : []),
    ...(p.preview !== null ? [`Preview: ${p.preview}`] : []),
    `Encapsulated: req-hdr=0, res-hdr=${reqHdr.length}, res-body=${reqHdr.length + resHdr.length}`,
    'Connection: close', '', '',
  ].join(CRLF);
  return Buffer.from(icap + reqHdr + resHdr, 'latin1');
}

/** One chunk: size line, data, CRLF. */
export function encodeChunk(data: Buffer): Buffer[] {
  return [Buffer.from(`${data.length.toString(16)}${CRLF}`, 'latin1'), data, CRLF_BYTES];
}

/** Writes, waiting for the socket to drain when its buffer is full; rejects if it closes first. */
export function write(socket: Socket, ...parts: Buffer[]): Promise<void> {
  return new Promise((resolve, reject) => {
    if (socket.destroyed || !socket.writable) return reject(new IcapClosedError('connection closed while sending'));
    socket.cork();
    let flushed = true;
    for (const part of parts) flushed = socket.write(part);
    socket.uncork();
    if (flushed) return resolve();
    const cleanup = () => { socket.off('drain', onDrain); socket.off('close', onClose); };
    const onDrain = () => { cleanup(); resolve(); };
    const onClose = () => { cleanup(); reject(new IcapClosedError('connection closed while sending')); };
    socket.once('drain', onDrain);
    socket.once('close', onClose);
  });
}

/** Sends a stream as chunks, one per piece read; the caller writes the last chunk. */
export async function sendChunks(socket: Socket, body: Readable): Promise<void> {
  try {
    for await (const piece of body) {
      if ((piece as Buffer).length > 0) await write(socket, ...encodeChunk(piece as Buffer));
    }
  } finally {
    body.destroy();
  }
}

/** What OPTIONS says about a service (RFC 3507 §4.10.2). */
export interface ServiceOptions {
  /** The service tag, quotes removed. */
  istag: string | null;
  methods: string[];
  /** Bytes the server wants in a preview; null when it wants none. */
  preview: number | null;
  allow204: boolean;
  maxConnections: number | null;
  /** How long the answer holds, when the server says. */
  ttlMs: number | null;
}

export function unquote(tag: string | undefined): string | null {
  if (tag === undefined) return null;
  const t = tag.trim().replace(/^"(.*)"$/, '$1');
  return t === '' ? null : t;
}

function nonNegative(value: string | undefined): number | null {
  return value !== undefined && /^\s*\d+\s*$/.test(value) ? Number(value) : null;
}

export function parseOptions(reply: IcapReply): ServiceOptions {
  const h = reply.headers;
  const ttl = nonNegative(h.get('options-ttl'));
  return {
    istag: unquote(h.get('istag')),
    methods: (h.get('methods') ?? '').split(',').map((s) => s.trim().toUpperCase()).filter(Boolean),
    preview: nonNegative(h.get('preview')),
    allow204: (h.get('allow') ?? '').split(',').some((s) => s.trim() === '204'),
    maxConnections: nonNegative(h.get('max-connections')) || null,
    ttlMs: ttl === null ? null : ttl * 1000,
  };
}

/** A threat name from the header fields of an ICAP reply or of its encapsulated response. */
export function threatFromHeaders(h: HeaderFields): string | null {
  const infection = /(?:^|;)\s*Threat=([^;]+)/i.exec(h.get('x-infection-found') ?? '');
  if (infection) return infection[1].trim();
  // `count`, then per violation: file name, threat name, violation id, disposition, one a line.
  const violations = h.lines('x-violations-found');
  if (Number(violations[0]) > 0 && violations[2]) return violations[2];
  for (const name of ['x-virus-id', 'x-virus-name']) {
    const value = h.get(name)?.trim();
    if (value) return value;
  }
  return null;
}

/** A threat name from a block page (HTML or text), e.g. c-icap's "contains the virus: <b> NAME </b>". */
export function threatFromPage(sample: Buffer): string | null {
  const text = sample.toString('latin1').replace(/<[^>]*>/g, ' ');
  const m = /\b(?:virus|threat|malware|infection)(?: name)?\s*(?:found)?\s*[:=]\s*([A-Za-z0-9][\w.:/!+-]*)/i.exec(text);
  return m ? m[1] : null;
}
