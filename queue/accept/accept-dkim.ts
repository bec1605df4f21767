/*
 * DKIM signing of outbound mail without a second write of the message: what the signature needs
 * is gathered while DATA streams to the spool file, and the signature is a header field kept with
 * the message's trace fields in the queue store, which delivery streams in front of the unchanged
 * spool file (queue-bodies.ts).
 *
 *   as bytes arrive  the header block is kept (up to `headLimit`); once it is complete the From:
 *                    domain picks the keys (accept-dkim-keys.ts) and, when there are any, the body
 *                    is hashed as it passes (relaxed canonicalization, SHA-256: mailauth's hasher);
 *   at the end       `sign` makes one DKIM-Signature per key over the header block as delivery will
 *                    send it: Ichidan's own fields in front, the sender's copies of them removed
 *                    and the Subject tagged when the verdict says so (queue-headers.ts), so the
 *                    signature covers exactly what leaves. Oversigned fields are listed in h= once
 *                    more than present (RFC 6376 section 5.4.2).
 * Canonicalization is relaxed/relaxed (survives the folding and whitespace changes relays make);
 * t= is the signing time, x= t= plus the key's `expire` when set.
 *
 * When no signature can be made for mail that should carry one, the client gets 451 4.7.5 and
 * keeps the message (unsigned mail from a domain that publishes DMARC would be refused or
 * filed as spam by its recipients: better held by the sender than sent); a header block past
 * the limit gets 550 5.6.0. With several keys, one that fails is logged and counted and the
 * others' signatures go out.
 *
 * Takes: the DATA chunks as the spool writer gets them; the keys; at the end the trace fields and
 *   the strip rule. Gives: the DKIM-Signature fields (CRLF-terminated), or why none could be made.
 * Memory: the header block only (bounded by `headLimit`); the body is hashed, never kept.
 * RFCs: 6376 (DKIM), 8463 (Ed25519-SHA256), 5322 (From).
 */
import { createHash, sign as cryptoSign } from 'node:crypto';
import { createRequire } from 'node:module';
import type { Logger } from 'pino';
import { REPLIES, structureRefused, type SmtpReply } from '../../base/base-reply.js';
import type { DkimKey, DkimSigning } from './accept-dkim-keys.js';

export type { DkimSigning } from './accept-dkim-keys.js';
import { stripHeaderSection, type StripRule } from '../queue-headers.js';

const mailauth = createRequire(import.meta.url);

interface BodyHasher { update(chunk: Buffer): void; digest(encoding: 'base64'): string }
interface ParsedField { key: string | null; casedKey: string | undefined; line: Buffer }
interface SigningLines { keys: string; headers: ParsedField[] }

const { dkimBody } = mailauth('mailauth/lib/dkim/body') as { dkimBody: (canon: string, hash: string, maxLength: false) => BodyHasher };
const tools = mailauth('mailauth/lib/tools') as {
  parseHeaders(buf: Buffer): { parsed: ParsedField[] };
  getSigningHeaderLines(parsed: ParsedField[], fieldNames: string): SigningLines;
  formatSignatureHeaderLine(type: 'DKIM', values: Record<string, unknown>, folded: boolean): string;
};
const { generateCanonicalizedHeader } = mailauth('mailauth/lib/dkim/header') as {
  generateCanonicalizedHeader(type: 'DKIM', lines: SigningLines, options: Record<string, unknown>): { canonicalizedHeader: Buffer; dkimHeaderOpts: Record<string, unknown> };
};
const addressparser = createRequire(mailauth.resolve('mailauth/lib/tools'))('nodemailer/lib/addressparser') as (value: string) => Array<{ address?: string; group?: Array<{ address?: string }> }>;

const BLANK_LINE = Buffer.from('\r\n\r\n');
const CRLF = Buffer.from('\r\n');

/** The one domain of the From: field (RFC 5322 section 3.6.2), or null when there is none or several. */
export function fromDomain(head: Buffer): string | null {
  const fields = tools.parseHeaders(head).parsed.filter((f) => f.key === 'from');
  if (fields.length !== 1) return null;
  const value = fields[0].line.toString('latin1');
  const addresses = addressparser(value.slice(value.indexOf(':') + 1).trim())
    .flatMap((a) => (a.group ? a.group : [a])).map((a) => a.address ?? '');
  const domains = new Set(addresses.map((a) => a.slice(a.lastIndexOf('@') + 1).toLowerCase().replace(/\.$/, '')));
  if (addresses.length === 0 || addresses.some((a) => !a.includes('@')) || domains.size !== 1) return null;
  return [...domains][0];
}

export type SignResult =
  | { kind: 'unsigned' }
  | { kind: 'signed'; fields: string; keys: DkimKey[]; failed: Array<{ key: DkimKey; error: Error }> }
  | { kind: 'failed'; why: string; keys: DkimKey[]; failed: Array<{ key: DkimKey; error: Error }> };

export class DkimCollector {
  #head: Buffer[] = [];
  #headBytes = 0;
  /** The header block (up to its blank line, excluded), once it is complete. */
  #block: Buffer | null = null;
  #tooLong = false;
  #keys: DkimKey[] = [];
  #hasher: BodyHasher | null = null;

  constructor(private readonly pick: (fromDomain: string) => DkimKey[], private readonly headLimit: number) {}

  /** The next bytes of DATA, as the spool file gets them. */
  feed(chunk: Buffer): void {
    if (this.#block) {
      this.#hasher?.update(chunk);
      return;
    }
    if (this.#tooLong) return;
    // The blank line may straddle chunks: look in the new chunk with the last 3 bytes before it.
    const before = this.#headBytes;
    const tail = this.#tail(3);
    this.#head.push(chunk);
    this.#headBytes += chunk.length;
    // A message opening with a blank line has no header block, so no From: to sign for.
    if (before < 2 && this.#headBytes >= 2 && Buffer.concat(this.#head).subarray(0, 2).equals(CRLF)) {
      this.#headComplete(Buffer.alloc(0));
      return;
    }
    const at = Buffer.concat([tail, chunk]).indexOf(BLANK_LINE);
    const end = at === -1 ? -1 : before - tail.length + at;
    if (end === -1 ? this.#headBytes > this.headLimit : end > this.headLimit) {
      this.#tooLong = true;
      this.#head = [];
      return;
    }
    if (end === -1) return;
    const all = Buffer.concat(this.#head);
    this.#headComplete(all.subarray(0, end + 2));
    // The body starts after the blank line (RFC 5322 section 2.1).
    this.#hasher?.update(all.subarray(end + 4));
  }

  /** The last `n` bytes kept of the header block so far. */
  #tail(n: number): Buffer {
    const parts: Buffer[] = [];
    let have = 0;
    for (let i = this.#head.length - 1; i >= 0 && have < n; i--) {
      parts.unshift(this.#head[i]);
      have += this.#head[i].length;
    }
    const joined = Buffer.concat(parts);
    return joined.subarray(Math.max(0, joined.length - n));
  }

  #headComplete(block: Buffer): void {
    this.#block = block;
    this.#head = [];
    const domain = fromDomain(block);
    this.#keys = domain ? this.pick(domain) : [];
    if (this.#keys.length > 0) this.#hasher = dkimBody('relaxed', 'sha256', false);
  }

  /** The end of DATA: a message without a blank line is all header block, with an empty body. */
  finish(): void {
    if (this.#block || this.#tooLong) return;
    const all = Buffer.concat(this.#head);
    if (all.length === 0) return;
    this.#headComplete(all.subarray(-2).equals(CRLF) ? all : Buffer.concat([all, CRLF]));
  }

  /**
   * The DKIM-Signature fields for the message as delivered: `trace` (Ichidan's fields, CRLF-ended)
   * in front of the header block, with `strip` applied to it as delivery applies it.
   */
  sign(trace: string, strip: StripRule | null, now: Date): SignResult {
    if (this.#tooLong) return { kind: 'failed', why: `a header block larger than ${this.headLimit} bytes cannot be DKIM-signed`, keys: [], failed: [] };
    if (!this.#block || this.#keys.length === 0 || !this.#hasher) return { kind: 'unsigned' };
    const bodyHash = this.#hasher.digest('base64');
    const block = strip ? Buffer.from(stripHeaderSection(this.#block.subarray(0, -2).toString('latin1'), strip) + '\r\n', 'latin1') : this.#block;
    const parsed = tools.parseHeaders(Buffer.concat([Buffer.from(trace, 'utf8'), block])).parsed;
    const fields: string[] = [];
    const failed: Array<{ key: DkimKey; error: Error }> = [];
    for (const key of this.#keys) {
      try {
        fields.push(signatureField(key, parsed, bodyHash, now));
      } catch (error) {
        failed.push({ key, error: error as Error });
      }
    }
    if (fields.length === 0) return { kind: 'failed', why: failed.map((f) => `${f.key.selector}._domainkey.${f.key.domain}: ${f.error.message}`).join('; '), keys: this.#keys, failed };
    return { kind: 'signed', fields: fields.map((f) => `${f}\r\n`).join(''), keys: this.#keys, failed };
  }
}

/** One DKIM-Signature field (unterminated) by `key` over the parsed header block. */
function signatureField(key: DkimKey, parsed: ParsedField[], bodyHash: string, now: Date): string {
  // Oversigned fields are signed wherever present, and then named once more (a null instance).
  const names = [...key.headers, ...key.oversign.filter((o) => !key.headers.some((h) => h.toLowerCase() === o.toLowerCase()))];
  const lines = tools.getSigningHeaderLines(parsed, names.join(':'));
  const signing: SigningLines = { keys: [lines.keys, ...key.oversign].filter(Boolean).join(': '), headers: lines.headers };
  const { canonicalizedHeader, dkimHeaderOpts } = generateCanonicalizedHeader('DKIM', signing, {
    signingDomain: key.domain, selector: key.selector, algorithm: key.algorithm, canonicalization: 'relaxed/relaxed', bodyHash,
    signTime: now, expires: key.expireMs !== null ? new Date(now.getTime() + key.expireMs) : undefined,
  });
  // RFC 8463 section 3: Ed25519 signs the SHA-256 hash of the canonicalized header block.
  const signature = key.algorithm === 'rsa-sha256'
    ? cryptoSign('sha256', canonicalizedHeader, key.privateKey)
    : cryptoSign(null, createHash('sha256').update(canonicalizedHeader).digest(), key.privateKey);
  return tools.formatSignatureHeaderLine('DKIM', { ...dkimHeaderOpts, b: signature.toString('base64') }, true);
}

/** The signatures to put in front of the message, or the reply that refuses it; logged and counted. */
export function signatures(collector: DkimCollector, signing: DkimSigning, trace: string, strip: StripRule | null, qid: string, log: Logger): { fields: string } | { reply: SmtpReply } {
  const result = collector.sign(trace, strip, new Date());
  if (result.kind === 'unsigned') return { fields: '' };
  for (const { key, error } of result.failed) {
    signing.count(key, 'failed');
    log.error({ qid, err: error, domain: key.domain, selector: key.selector, tenant: key.tenant }, 'DKIM signing failed');
  }
  if (result.kind === 'failed') {
    if (result.failed.length === 0) signing.count(null, 'failed');
    log.warn({ qid, why: result.why }, 'message not signed');
    return { reply: result.keys.length === 0 ? structureRefused(result.why) : REPLIES.signingFailed };
  }
  const done = result.keys.filter((k) => !result.failed.some((f) => f.key === k));
  for (const key of done) signing.count(key, 'signed');
  log.info({ qid, dkim: done.map((k) => `${k.selector}._domainkey.${k.domain}`).join(' ') }, 'DKIM-signed');
  return { fields: result.fields };
}
