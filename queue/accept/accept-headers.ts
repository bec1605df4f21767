/*
 * The header fields the accept step puts in front of a message, from the engines' verdict.
 *
 * Takes: the verdict's header lines (engine output: Authentication-Results, X-Spam-*, X-Ichidan-*)
 *   and the host name Ichidan receives as.
 * Gives: the fields, each made safe (`headerField`), and the strip rule (queue-headers.ts) that
 *   leaves out at delivery the sender's own copies of what Ichidan now says, and anything claiming
 *   to be this host's Authentication-Results (RFC 8601 section 5).
 * RFCs: 5322 (header fields, folding), 8601 (Authentication-Results).
 */
import type { Verdict } from '../../engines/engines-verdict.js';
import { stripRuleText } from '../queue-headers.js';

/**
 * One header field, safe to put in front of a message: its lines (folded with CRLF + white
 * space as the engine folded them) without control characters, no line left blank, every
 * continuation starting with white space — engine output can never start a second field or end
 * the header section.
 */
export function headerField(text: string): string {
  const lines = text.split(/\r\n|\r|\n/).map((l) => l.replace(/[\x00-\x08\x0b-\x1f\x7f]/g, ' ')).filter((l, i) => i === 0 || l.trim() !== '');
  return lines.map((l, i) => (i === 0 || /^[ \t]/.test(l) ? l : ` ${l}`)).join('\r\n') + '\r\n';
}

/** The verdict's fields, CRLF-terminated, ready to go in front of the message. */
export function verdictFields(verdict: Verdict): string {
  return verdict.headers.map(headerField).join('');
}

/** The strip rule for a message queued with the verdict's fields (Authentication-Results are left beside other hosts'). */
export function verdictStripRule(verdict: Verdict, hostname: string): string {
  const ours = new Set(verdict.headers.map((h) => h.slice(0, h.indexOf(':')).trim().toLowerCase()).filter((n) => n !== 'authentication-results'));
  return stripRuleText([...ours, 'x-ichidan-*', `authentication-results=${hostname.toLowerCase()}`], verdict.subjectTag);
}
