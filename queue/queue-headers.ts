/*
 * Removing header fields from a message as it is streamed out, without rewriting the spool file.
 *
 * Takes: the message stream (spool file or kept bytes) and a removal rule: field names
 *   (case-insensitive; "x-ichidan-*" for a prefix), and "authentication-results=HOST" for
 *   Authentication-Results fields whose authserv-id is HOST.
 * Gives: the same bytes with those fields (and their folded continuation lines) left out of the
 *   header section, the Subject tagged when the rule says so (spam tagging); the body untouched.
 * Why: Ichidan puts its own X-Spam-*, X-Virus-Scanned, X-Ichidan-* and Authentication-Results
 *   fields in front of the message at delivery; copies a sender wrote into the message must not
 *   sit beside them pretending to be ours (RFC 8601 section 5: a border MTA removes fields that
 *   claim its authserv-id).
 * A header section longer than HEADER_LIMIT is passed through unchanged (nothing is held back
 * unbounded).
 */
import { Transform, type TransformCallback } from 'node:stream';

export const HEADER_LIMIT = 1024 * 1024;

export interface StripRule {
  names: Set<string>;
  prefixes: string[];
  authservIds: Set<string>;
  /** Put in front of the Subject (spam tagging), unless it is already there. */
  subjectTag: string | null;
}

/**
 * Parses the stored rule: items separated by commas ("x-spam-status,x-ichidan-*,
 * authentication-results=mx.example"), and after a newline, the subject tag if any.
 */
export function parseStripRule(text: string | null): StripRule | null {
  if (!text) return null;
  const [list, subjectTag] = text.split('\n');
  const rule: StripRule = { names: new Set(), prefixes: [], authservIds: new Set(), subjectTag: subjectTag || null };
  for (const item of list.split(',').map((s) => s.trim().toLowerCase()).filter(Boolean)) {
    if (item.startsWith('authentication-results=')) rule.authservIds.add(item.slice('authentication-results='.length));
    else if (item.endsWith('*')) rule.prefixes.push(item.slice(0, -1));
    else rule.names.add(item);
  }
  return rule;
}

export function stripRuleText(fields: string[], subjectTag: string | null): string {
  return fields.join(',') + (subjectTag ? `\n${subjectTag}` : '');
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

/** A Subject field with the tag in front of its value (once); other fields unchanged. */
function tagged(field: string[], tag: string | null): string[] {
  if (!tag || !/^subject\s*:/i.test(field[0])) return field;
  const colon = field[0].indexOf(':');
  const value = field[0].slice(colon + 1).trimStart();
  if (value.startsWith(tag)) return field;
  return [`${field[0].slice(0, colon + 1)} ${tag} ${value}`.replace(/ +$/, ''), ...field.slice(1)];
}

/** The header section with the rule's fields removed (and the Subject tagged when asked). */
export function stripHeaderSection(head: string, rule: StripRule): string {
  const lines = head.split('\r\n');
  const out: string[] = [];
  let field: string[] = [];
  const flush = () => {
    if (field.length > 0 && !removes(field.join('\r\n'), rule)) out.push(...tagged(field, rule.subjectTag));
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
