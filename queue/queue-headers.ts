/*
 * Removing header fields from a message as it is streamed out, without rewriting the spool file.
 *
 * Takes: the message stream (spool file or kept bytes) and a removal rule: field names
 *   (case-insensitive; "x-ichidan-*" for a prefix), and "authentication-results=HOST" for
 *   Authentication-Results fields whose authserv-id is HOST.
 * Gives: the same bytes with those fields (and their folded continuation lines) left out of the
 *   header section; the body untouched.
 * Why: Ichidan puts its own X-Spam-*, X-Virus-Scanned, X-Ichidan-* and Authentication-Results
 *   fields in front of the message at delivery; copies a sender wrote into the message must not
 *   sit beside them pretending to be ours (RFC 8601 section 5: a border MTA removes fields that
 *   claim its authserv-id).
 * A header section longer than HEADER_LIMIT is passed through unchanged (nothing is held back
 * unbounded).
 */
import { Transform, type TransformCallback } from 'node:stream';

const HEADER_LIMIT = 1024 * 1024;

export interface StripRule {
  names: Set<string>;
  prefixes: string[];
  authservIds: Set<string>;
}

/** Parses the stored rule ("x-spam-status,x-ichidan-*,authentication-results=mx.example"). */
export function parseStripRule(text: string | null): StripRule | null {
  if (!text) return null;
  const rule: StripRule = { names: new Set(), prefixes: [], authservIds: new Set() };
  for (const item of text.split(',').map((s) => s.trim().toLowerCase()).filter(Boolean)) {
    if (item.startsWith('authentication-results=')) rule.authservIds.add(item.slice('authentication-results='.length));
    else if (item.endsWith('*')) rule.prefixes.push(item.slice(0, -1));
    else rule.names.add(item);
  }
  return rule;
}

function removes(field: string, rule: StripRule): boolean {
  const colon = field.indexOf(':');
  if (colon <= 0) return false;
  const name = field.slice(0, colon).trim().toLowerCase();
  if (rule.names.has(name) || rule.prefixes.some((p) => name.startsWith(p))) return true;
  if (name === 'authentication-results') {
    // The authserv-id is the first token of the value (RFC 8601 section 2.2), comments aside.
    const id = field.slice(colon + 1).replace(/\([^)]*\)/g, ' ').trim().split(/[\s;]/)[0]?.toLowerCase();
    return !!id && rule.authservIds.has(id);
  }
  return false;
}

/** The header section with the rule's fields removed. */
export function stripHeaderSection(head: string, rule: StripRule): string {
  const lines = head.split('\r\n');
  const out: string[] = [];
  let field: string[] = [];
  const flush = () => {
    if (field.length > 0 && !removes(field.join('\r\n'), rule)) out.push(...field);
    field = [];
  };
  for (const line of lines) {
    if (/^[ \t]/.test(line) && field.length > 0) field.push(line);
    else {
      flush();
      field = [line];
    }
  }
  flush();
  return out.join('\r\n');
}

export class HeaderStrip extends Transform {
  #head: Buffer[] = [];
  #size = 0;
  #done = false;

  constructor(private readonly rule: StripRule) {
    super();
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    if (this.#done) return cb(null, chunk);
    this.#head.push(chunk);
    this.#size += chunk.length;
    const all = Buffer.concat(this.#head);
    this.#head = [all];
    const end = all.indexOf('\r\n\r\n');
    if (end >= 0) {
      this.#done = true;
      this.#head = [];
      const head = stripHeaderSection(all.subarray(0, end).toString('latin1'), this.rule);
      this.push(Buffer.from(head, 'latin1'));
      return cb(null, all.subarray(end));
    }
    if (this.#size > HEADER_LIMIT) {
      this.#done = true;
      this.#head = [];
      return cb(null, all);
    }
    cb();
  }

  override _flush(cb: TransformCallback): void {
    // A message with no body: the whole of it is the header section.
    if (!this.#done && this.#size > 0) {
      const all = Buffer.concat(this.#head);
      const text = all.toString('latin1');
      const trailing = text.endsWith('\r\n') ? '\r\n' : '';
      this.push(Buffer.from(stripHeaderSection(trailing ? text.slice(0, -2) : text, this.rule) + trailing, 'latin1'));
    }
    cb();
  }
}
