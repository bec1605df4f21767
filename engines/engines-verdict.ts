/*
 * The verdict: one decision for a message from every engine's result and the tenant's policy.
 * A pure function — no I/O, no clock — tested from a table (engines-verdict.test.ts).
 *
 * Takes: the runs (engine name, kind, shadow, weight, onError, and its result or why it did not
 *   run), a `VerdictPolicy` (engines-config.ts), and what Ichidan's own structure check found
 *   (queue/accept/accept-structure.ts: a header block, header count, MIME depth or part count past `limits`).
 * Gives: accept / tag / quarantine / reject / tempfail, the reason in words, and the header lines
 *   to add (X-Virus-Scanned, X-Spam-Status, X-Spam-Flag, Authentication-Results, X-Ichidan-*).
 *
 * Order of precedence, strongest first: reject (an AV hit under `virus: reject`, a policy or
 * authentication violation asking for it, spam at the reject level, a message that cannot be
 * fully checked under `unscannable: reject`) > quarantine > tempfail (an
 * engine with `onError: tempfail` failed, a kind below its quorum under `belowQuorum: tempfail`,
 * or a spam engine asking for a soft reject) > tag > accept. A definite finding about the content
 * beats a missing opinion; a missing opinion beats a mild one.
 *
 * Shadow engines are recorded with the others (engines-records.ts) but never change the
 * decision, the quorum or the headers.
 */
import type { EngineKind, EngineResult } from './engine.js';
import type { VerdictPolicy } from './engines-config.js';

export interface EngineRun {
  engine: string;
  kind: EngineKind;
  shadow: boolean;
  weight: number;
  onError: 'skip' | 'tempfail';
  /** Present when the engine ran (or failed trying). */
  result?: EngineResult;
  /** Why it did not run: above its maxSize, or switched off (breaker or operator). */
  skipped?: 'size' | 'disabled';
  version?: string | null;
  ms: number;
}

export type VerdictAction = 'accept' | 'tag' | 'quarantine' | 'tempfail' | 'reject';

export interface Verdict {
  action: VerdictAction;
  reason: string;
  /** Header lines (without CRLF) to put in front of the message when it is accepted. */
  headers: string[];
  /** The combined spam level in normalised units, when a spam engine answered. */
  spamScore: number | null;
  /** Kinds that were below quorum (accepted unscanned, or the reason for a tempfail). */
  unscanned: string[];
  /** Put in front of the Subject at delivery: the message was judged spam and the policy asks for it. */
  subjectTag: string | null;
}

const RANK: Record<VerdictAction, number> = { accept: 0, tag: 1, tempfail: 2, quarantine: 3, reject: 4 };

export function stronger(a: VerdictAction, b: VerdictAction): VerdictAction {
  return RANK[a] >= RANK[b] ? a : b;
}

interface Finding {
  action: VerdictAction;
  reason: string;
}

const fmt = (n: number) => (Math.round(n * 100) / 100).toString();
/** Engine-supplied text (signature names, rules naming files) as one safe line: no control characters, bounded. */
const clean = (s: string, max = 200) => s.replace(/[\x00-\x1f\x7f-\x9f]/g, '?').slice(0, max);

/** One spam engine's score in units of its own threshold, raised to what its stated action implies. */
function normalised(run: EngineRun, policy: VerdictPolicy): { n: number; softReject: boolean } | null {
  const outcome = run.result?.outcome;
  if (!outcome || (outcome.status !== 'clean' && outcome.status !== 'spam') || !outcome.score) return null;
  const { score, threshold, action } = outcome.score;
  let n = threshold > 0 ? score / threshold : score > 0 ? Infinity : 0;
  if (outcome.status === 'spam') n = Math.max(n, 1);
  if (action === 'reject') n = Math.max(n, policy.spam.reject ?? 1);
  if (action === 'add header' || action === 'rewrite subject') n = Math.max(n, policy.spam.tag);
  return { n: Math.max(n, 0), softReject: action === 'soft reject' };
}

function spamLevel(levels: number[], weights: number[], policy: VerdictPolicy): { level: VerdictAction; combined: number } {
  const { mode, tag, quarantine, reject } = policy.spam;
  const totalWeight = weights.reduce((a, b) => a + b, 0);
  const combined = levels.reduce((sum, n, i) => sum + n * weights[i], 0) / totalWeight;
  const reaches = (threshold: number | null): boolean => {
    if (threshold === null) return false;
    if (mode === 'score') return combined >= threshold;
    const votes = levels.filter((n) => n >= threshold).length;
    if (mode === 'any') return votes >= 1;
    if (mode === 'majority') return votes * 2 > levels.length;
    return votes === levels.length;
  };
  const level: VerdictAction = reaches(reject) ? 'reject' : reaches(quarantine) ? 'quarantine' : reaches(tag) ? 'tag' : 'accept';
  return { level, combined };
}

/** Reasons that begin so are answered by replyFor (engines-run.ts) with their own replies. */
export const STRUCTURE_REASON = 'structure: ';
export const UNSCANNABLE_REASON = 'not fully scanned by ';

export function decide(runs: EngineRun[], policy: VerdictPolicy, structure: string | null = null): Verdict {
  const counted = runs.filter((r) => !r.shadow);
  const findings: Finding[] = [];
  const headers: string[] = [];
  const unscanned: string[] = [];
  const unjudged: Finding[] = [];

  // Findings about the content.
  for (const run of counted) {
    const o = run.result?.outcome;
    if (!o) continue;
    if (o.status === 'infected') findings.push({ action: policy.virus, reason: `virus ${clean(o.signature, 100).replace(/\s/g, '_')} found by ${run.engine}` });
    if (o.status === 'violation') {
      findings.push({ action: o.action, reason: `${run.kind} ${run.engine}: ${clean(o.rule)}` });
      if (o.action === 'tag') headers.push(`X-Ichidan-Tag: ${run.kind} ${run.engine}: ${clean(o.rule)}`);
    }
    if (o.status === 'unscannable') unjudged.push({ action: policy.unscannable, reason: `${UNSCANNABLE_REASON}${run.engine}: ${clean(o.reason)}` });
    if (o.status === 'error' && run.onError === 'tempfail') findings.push({ action: 'tempfail', reason: `${run.engine} failed (${o.error}: ${clean(o.message)})` });
    for (const h of run.result?.headers ?? []) headers.push(h);
  }

  // After the engines' findings: a virus found is the better reason to give.
  if (structure !== null) findings.push({ action: policy.unscannable, reason: `${STRUCTURE_REASON}${clean(structure)}` });
  findings.push(...unjudged);

  // Spam: the combined score of the spam engines that answered.
  const spamRuns = counted.filter((r) => r.kind === 'spam');
  const scored = spamRuns.map((r) => ({ run: r, s: normalised(r, policy) })).filter((x) => x.s !== null) as Array<{ run: EngineRun; s: { n: number; softReject: boolean } }>;
  let spamScore: number | null = null;
  let subjectTag: string | null = null;
  if (scored.length > 0) {
    const { level, combined } = spamLevel(scored.map((x) => x.s.n), scored.map((x) => x.run.weight), policy);
    spamScore = combined;
    const parts = scored.map((x) => {
      const o = x.run.result!.outcome as { score: { score: number; threshold: number } };
      return `${x.run.engine}=${fmt(o.score.score)}/${fmt(o.score.threshold)}`;
    });
    const { tag, reject } = policy.spam;
    headers.push(`X-Spam-Status: ${level === 'accept' ? 'No' : 'Yes'}, score=${fmt(combined)} tag=${fmt(tag)}${reject === null ? '' : ` reject=${fmt(reject)}`} mode=${policy.spam.mode} engines=${parts.join(',')}`);
    if (level !== 'accept') {
      headers.push('X-Spam-Flag: YES');
      subjectTag = policy.spam.subjectTag;
      findings.push({ action: level, reason: `spam (score ${fmt(combined)}, ${policy.spam.mode} mode; ${parts.join(', ')})` });
    }
    for (const x of scored) {
      if (x.s.softReject) findings.push({ action: 'tempfail', reason: `${x.run.engine} asked for a soft reject` });
    }
  }

  // Quorum per kind: engines skipped for size are not expected to answer.
  const kinds: EngineKind[] = ['av', 'spam', 'auth', 'policy'];
  for (const kind of kinds) {
    const expected = counted.filter((r) => r.kind === kind && r.skipped !== 'size');
    const needed = Math.min(policy.quorum[kind], expected.length);
    if (needed === 0) continue;
    const answered = expected.filter((r) => r.result && r.result.outcome.status !== 'error').length;
    if (answered < needed) {
      unscanned.push(kind);
      if (policy.belowQuorum === 'tempfail') findings.push({ action: 'tempfail', reason: `${kind} quorum not met (${answered} of ${needed} answered)` });
    }
  }

  // What the AV engines did, for the reader of the delivered message.
  const av = counted.filter((r) => r.kind === 'av');
  if (av.length > 0) {
    const clean = av.filter((r) => r.result?.outcome.status === 'clean').map((r) => r.engine);
    const missing = av.filter((r) => !r.result || r.result.outcome.status === 'error' || r.result.outcome.status === 'unscannable')
      .map((r) => `${r.engine} ${r.skipped ? `skipped: ${r.skipped}` : r.result!.outcome.status === 'unscannable' ? 'could not scan it whole' : (r.result!.outcome as { error: string }).error}`);
    headers.push(`X-Virus-Scanned: ${clean.length > 0 ? `clean by ${clean.join(', ')}` : 'not scanned'}${missing.length > 0 ? ` (${missing.join('; ')})` : ''}`);
  }
  const bySize = counted.filter((r) => r.skipped === 'size').map((r) => r.engine);
  if (unscanned.length > 0 || bySize.length > 0) {
    const why = [...unscanned.map((k) => `${k} quorum not met`), ...(bySize.length ? [`too large for ${bySize.join(', ')}`] : [])];
    headers.push(`X-Ichidan-Unscanned: ${why.join('; ')}`);
  }

  let action: VerdictAction = 'accept';
  let reason = 'no engine objected';
  for (const f of findings) {
    if (RANK[f.action] > RANK[action]) {
      action = f.action;
      reason = f.reason;
    }
  }
  if (action === 'accept' && unscanned.length > 0) reason = `accepted unscanned: ${unscanned.join(', ')} quorum not met`;
  return { action, reason, headers, spamScore, unscanned, subjectTag };
}
