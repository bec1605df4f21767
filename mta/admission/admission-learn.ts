/*
 * What the known senders learn from one message: a pure function from the accept step's result
 * to a `SenderEvent` (admission-senders.ts), table-tested in admission-learn.test.ts.
 *
 * Takes: the client's address, the AUTH user, the accept step's result (queue/accept/accept-step.ts),
 *   whose `scan` carries the engines' record and the combined spam level.
 * Gives: null when there is nothing to learn about the sender — the data broke off, mail relayed by
 *   the proxy, or a refusal that was not the engines' verdict (too big, no room on the spool: that
 *   says nothing of the sender). Else:
 *   - outcome `refused` when the engines' verdict refused it (5xx or 4xx); `spam` when it was
 *     queued but the verdict tagged or quarantined it, or the combined spam level reached the
 *     engines' threshold (1 in normalised units); `clean` otherwise (also when no engine scanned);
 *   - the sending domain only when it is authenticated: the From domain (as the mailauth engine,
 *     engines/auth/auth.ts, records it in `detail.dmarc.domain`, its organisational domain) when
 *     a DKIM signature of it passed and is aligned with it, or SPF passed for the envelope domain
 *     and that domain is the From domain or below it (relaxed alignment, RFC 7489 §3.1);
 *   - the score: the combined spam level, when a spam engine gave one.
 * Senders are learned in normal times (seed 003): while the node is busy or overloaded a clean
 * message teaches nothing (else a flood of clean-looking mail spread thinly over many networks
 * would teach itself in), while refusals and spam still count against their sender.
 */
import type { AcceptResult } from '../../queue/accept/accept-step.js';
import type { Level } from './admission-decide.js';
import type { RunRecord } from '../../engines/engines-records.js';
import { domainKey } from './admission-senders-key.js';
import type { SenderEvent } from './admission-senders.js';

export interface LearnInput {
  /** The client's IP. */
  address: string;
  authUser: string | null;
  result: AcceptResult;
  /** The node's pressure level when the message was judged (normal when not given). */
  level?: Level;
}

/** The combined spam level at which a message counts as spam (the engines' own threshold). */
const SPAM_LEVEL = 1;

export function learnedFrom({ address, authUser, result, level = 'normal' }: LearnInput): SenderEvent | null {
  if (result.kind === 'incomplete' || result.kind === 'relay') return null;
  const scan = result.scan;
  if (result.kind === 'refused' && !scan) return null;
  const score = scan?.spamScore ?? null;
  let outcome: SenderEvent['outcome'] = 'clean';
  if (result.kind === 'refused') outcome = 'refused';
  else if (scan && (scan.record.action === 'tag' || scan.record.action === 'quarantine' || (score !== null && score >= SPAM_LEVEL))) outcome = 'spam';
  if (outcome === 'clean' && level !== 'normal') return null;
  return { address, authUser: authUser || null, domain: scan ? alignedDomain(scan.record.runs) : null, outcome, score };
}

interface AuthDetail {
  spf?: { result?: unknown; domain?: unknown } | null;
  dkim?: Array<{ result?: unknown; aligned?: unknown }>;
  dmarc?: { domain?: unknown } | null;
}

/** The From domain, when an authentication engine found it DKIM- or SPF-aligned. */
export function alignedDomain(runs: RunRecord[]): string | null {
  for (const run of runs) {
    if (run.kind !== 'auth' || !run.detail) continue;
    const detail = run.detail as AuthDetail;
    const from = typeof detail.dmarc?.domain === 'string' ? domainKey(detail.dmarc.domain) : null;
    if (!from) continue;
    const dkim = Array.isArray(detail.dkim) && detail.dkim.some((d) => d.result === 'pass' && typeof d.aligned === 'string' && d.aligned !== '');
    const envelope = detail.spf?.result === 'pass' && typeof detail.spf.domain === 'string' ? domainKey(detail.spf.domain) : null;
    const spf = envelope !== null && (envelope === from || envelope.endsWith(`.${from}`));
    if (dkim || spf) return from;
  }
  return null;
}
