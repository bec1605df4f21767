/*
 * What is counted about one sender, how the counts fade, how several nodes' counts add up, and
 * how a sender stands. Pure functions: no I/O, the clock passed in.
 *
 * A `Tally` holds decayed counts as they were at `at`: messages accepted clean, refused, judged
 * spam, and the sum and number of spam scores (their mean is the sender's score). Counts halve
 * every `halfLife` (admission.senders.halfLife): brought to a time t they are multiplied by
 * 2^-((t - at) / halfLife). A resolver's tally counts its pairings with clients (`clean`) and keeps
 * the client addresses it was last paired with (`pairs`).
 *
 * Merging (the cluster): each node counts only the messages it accepted itself, and shares its
 * own tally of each sender as a whole value under its own name (never as increments). A sender's
 * counts are the sum of every node's tally, each brought to the same time; receiving a node's
 * tally again replaces what was had from it, so a replay after an outage counts nothing twice.
 *
 * Standing: blocked or pinned by an operator first; then known when the decayed clean count is at
 * least `minClean` and refused + spam are at most `maxBadShare` of all; else unknown. (Trusted
 * networks are pinned by the caller: they need no entry.)
 * Settings: admission.senders.halfLife, minClean, maxBadShare.
 */
import type { SendersConfig } from './admission-config.js';

export type Standing = 'pinned' | 'known' | 'unknown' | 'blocked';
export const STANDINGS: readonly Standing[] = ['pinned', 'known', 'unknown', 'blocked'];

export type Outcome = 'clean' | 'refused' | 'spam';

export interface Tally {
  clean: number;
  refused: number;
  spam: number;
  scoreSum: number;
  scored: number;
  /** When the counts above were as they are. */
  at: number;
  firstSeen: number;
  lastSeen: number;
  /** A resolver's last paired client addresses, newest last. */
  pairs?: string[];
}

/** An operator's decision about an entry. */
export interface Mark {
  flag: 'pinned' | 'blocked';
  note: string | null;
  at: number;
  by: string;
}

/** Most client addresses kept per resolver. */
export const MAX_PAIRS = 16;

export function emptyTally(now: number): Tally {
  return { clean: 0, refused: 0, spam: 0, scoreSum: 0, scored: 0, at: now, firstSeen: now, lastSeen: now };
}

export function decayFactor(from: number, to: number, halfLifeMs: number): number {
  if (to <= from) return 1;
  return Math.pow(2, -(to - from) / halfLifeMs);
}

/** The tally's counts as they are at `now`. */
export function decayed(t: Tally, now: number, halfLifeMs: number): Tally {
  const f = decayFactor(t.at, now, halfLifeMs);
  if (f === 1) return t;
  return { ...t, clean: t.clean * f, refused: t.refused * f, spam: t.spam * f, scoreSum: t.scoreSum * f, scored: t.scored * f, at: Math.max(now, t.at) };
}

/** One message more (a new tally; the old one is left as it was). */
export function counted(t: Tally, outcome: Outcome, score: number | null, now: number, halfLifeMs: number): Tally {
  const d = decayed(t, now, halfLifeMs);
  const next = { ...d, [outcome]: d[outcome] + 1, lastSeen: Math.max(d.lastSeen, now) };
  if (score !== null && Number.isFinite(score)) {
    next.scoreSum += score;
    next.scored += 1;
  }
  return next;
}

/** One pairing more of a resolver with a client address (kept newest last, at most MAX_PAIRS). */
export function paired(t: Tally, client: string, now: number, halfLifeMs: number): Tally {
  const d = decayed(t, now, halfLifeMs);
  const pairs = (d.pairs ?? []).filter((p) => p !== client);
  pairs.push(client);
  if (pairs.length > MAX_PAIRS) pairs.splice(0, pairs.length - MAX_PAIRS);
  return { ...d, clean: d.clean + 1, lastSeen: Math.max(d.lastSeen, now), pairs };
}

/** The sum of several nodes' tallies, brought to `now`. */
export function merged(tallies: Iterable<Tally>, now: number, halfLifeMs: number): Tally | null {
  let sum: Tally | null = null;
  for (const raw of tallies) {
    const t = decayed(raw, now, halfLifeMs);
    if (!sum) {
      sum = { ...t, at: now, pairs: t.pairs ? [...t.pairs] : undefined };
      continue;
    }
    sum.clean += t.clean;
    sum.refused += t.refused;
    sum.spam += t.spam;
    sum.scoreSum += t.scoreSum;
    sum.scored += t.scored;
    sum.firstSeen = Math.min(sum.firstSeen, t.firstSeen);
    sum.lastSeen = Math.max(sum.lastSeen, t.lastSeen);
    if (t.pairs) sum.pairs = [...new Set([...(sum.pairs ?? []), ...t.pairs])].slice(-MAX_PAIRS);
  }
  return sum;
}

/** The share of a sender's messages that were refused or spam (0 with none). */
export function badShare(t: Tally): number {
  const all = t.clean + t.refused + t.spam;
  return all > 0 ? (t.refused + t.spam) / all : 0;
}

/** How a sender stands by its mark and its (merged, decayed) counts. */
export function standingFrom(mark: Mark | null, tally: Tally | null, config: Pick<SendersConfig, 'minClean' | 'maxBadShare'>): Standing {
  return standingByCounts(mark, tally?.clean ?? 0, tally ? tally.refused + tally.spam : 0, config);
}

/** The same from the decayed clean and bad (refused + spam) counts alone (the per-connection path: nothing allocated). */
export function standingByCounts(mark: Mark | null, clean: number, bad: number, config: Pick<SendersConfig, 'minClean' | 'maxBadShare'>): Standing {
  if (mark) return mark.flag;
  // Judged at the precision shown to operators: three messages a moment ago are "3", not 2.9999.
  const shown = Math.round(clean * 100) / 100;
  const all = clean + bad;
  return shown >= config.minClean && (all > 0 ? bad / all : 0) <= config.maxBadShare ? 'known' : 'unknown';
}

/** A tally from JSON a peer or the database gave; null when it is not one. */
export function tallyOf(value: unknown): Tally | null {
  if (!value || typeof value !== 'object') return null;
  const v = value as Record<string, unknown>;
  const nums = ['clean', 'refused', 'spam', 'scoreSum', 'scored', 'at', 'firstSeen', 'lastSeen'] as const;
  if (!nums.every((k) => typeof v[k] === 'number' && Number.isFinite(v[k]) && (v[k] as number) >= 0)) return null;
  const t = Object.fromEntries(nums.map((k) => [k, v[k]])) as unknown as Tally;
  if (Array.isArray(v.pairs)) t.pairs = v.pairs.filter((p): p is string => typeof p === 'string').slice(-MAX_PAIRS);
  return t;
}

export function markOf(value: unknown): Mark | null {
  if (!value || typeof value !== 'object') return null;
  const v = value as Record<string, unknown>;
  if (v.flag !== 'pinned' && v.flag !== 'blocked') return null;
  if (typeof v.at !== 'number' || typeof v.by !== 'string') return null;
  return { flag: v.flag, note: typeof v.note === 'string' ? v.note : null, at: v.at, by: v.by };
}
