/*
 * The capacity of each (destination site, source address) pair, as the scheduler counts it:
 * deliveries in flight, the window they may fill (Postfix's slow start: it begins at the site's
 * `initialConnections`, grows by 1/window per success while in full use, loses one on a slow
 * reply, halves on a throttle, never below 1 nor above `maxConnections`), and a token bucket for
 * the site's message rate. A pair keeps what it learnt while in use; it is forgotten after half an
 * hour unused (checked at most once a minute).
 *
 * A destination that refused a connection at its banner for the number we had open (a per-client
 * connection cap) gives the pair a `cap`: one below the count it refused. The window stays within
 * it, and after each quiet `probe` interval in full use the cap is raised by one, so a cap the
 * destination raised is found again, one connection at a time; a refusal lowers it back.
 */
import type { SiteCapacity } from '../base/base-site.js';

export interface Pair {
  window: number;
  /** The site's maxConnections and message rate when last seen. */
  max: number;
  rate?: { count: number; perMs: number };
  active: number;
  /** The destination's cap on our connections, learnt from refusals (undefined: none known). */
  cap?: number;
  /** When the cap was last set or raised, and how long it then holds before one more is tried. */
  cappedAt: number;
  probe: number;
  tokens: number;
  refilledAt: number;
  usedAt: number;
}

export type Feedback = 'ok' | 'slow' | 'throttled';

export interface PairView {
  site: string;
  source: string;
  window: number;
  active: number;
  maxConnections: number;
}

const IDLE_MS = 30 * 60_000;
const PRUNE_EVERY_MS = 60_000;

function pairKey(site: string, source: string | null): string {
  return `${site}\u0000${source ?? ''}`;
}

export class Pairs {
  readonly #pairs = new Map<string, Pair>();
  #prunedAt = 0;

  /** The pair, created at the site's initial window, or brought to the site's limits as they are now (a reload may have lowered them). */
  take(site: string, limits: SiteCapacity, source: string | null, now: number): Pair {
    const key = pairKey(site, source);
    let pair = this.#pairs.get(key);
    const { maxConnections, messageRate } = limits;
    if (!pair) {
      pair = { window: Math.min(limits.initialConnections, maxConnections), max: maxConnections, rate: messageRate, active: 0, cappedAt: 0, probe: 0, tokens: messageRate?.count ?? 0, refilledAt: now, usedAt: now };
      this.#pairs.set(key, pair);
      return pair;
    }
    pair.max = maxConnections;
    pair.window = Math.min(pair.window, maxConnections);
    if (!pair.rate && messageRate) pair.tokens = messageRate.count;
    pair.rate = messageRate;
    refill(pair, now);
    return pair;
  }

  get(site: string, source: string | null): Pair | undefined {
    return this.#pairs.get(pairKey(site, source));
  }

  /** New limits for every pair of a site. */
  limit(site: string, limits: SiteCapacity): void {
    for (const [key, pair] of this.#pairs) {
      if (!key.startsWith(site + '\u0000')) continue;
      pair.max = limits.maxConnections;
      pair.window = Math.min(pair.window, pair.max);
    }
  }

  feedback(site: string, source: string | null, kind: Feedback, now = Date.now()): void {
    const pair = this.get(site, source);
    if (!pair) return;
    if (kind === 'ok') {
      if (pair.active < Math.floor(pair.window)) return;
      if (pair.cap !== undefined && pair.window >= pair.cap && now - pair.cappedAt >= pair.probe) {
        pair.cap = pair.cap + 1 >= pair.max ? undefined : pair.cap + 1;
        pair.cappedAt = now;
      }
      pair.window = Math.min(pair.max, pair.cap ?? Infinity, pair.window + 1 / pair.window);
    } else if (kind === 'slow') {
      pair.window = Math.max(1, pair.window - 1);
    } else {
      pair.window = Math.max(1, pair.window / 2);
    }
  }

  /**
   * The destination refused a connection at its banner while `open` of ours were open (that one
   * included): the pair holds below that count from now on, trying one more after `probeMs`.
   * Returns the cap now in force (undefined: the pair is unknown).
   */
  cap(site: string, source: string | null, open: number, probeMs: number, now: number): number | undefined {
    const pair = this.get(site, source);
    if (!pair) return undefined;
    pair.cap = Math.max(1, Math.min(pair.cap ?? Infinity, pair.max, open - 1));
    pair.window = Math.min(pair.window, pair.cap);
    pair.cappedAt = now;
    pair.probe = probeMs;
    return pair.cap;
  }

  /** Connections the pair may have open: its learnt cap, when one holds it below the site's maximum. */
  connections(site: string, source: string | null): number | undefined {
    return this.get(site, source)?.cap;
  }

  setWindow(site: string, source: string | null, window: number): void {
    const pair = this.get(site, source);
    if (pair) pair.window = Math.max(1, Math.min(pair.max, pair.cap ?? Infinity, window));
  }

  views(): PairView[] {
    return [...this.#pairs].map(([key, pair]) => {
      const [site, source] = key.split('\u0000');
      return { site, source, window: Math.floor(pair.window), active: pair.active, maxConnections: pair.max };
    });
  }

  prune(now: number): void {
    if (now - this.#prunedAt < PRUNE_EVERY_MS) return;
    this.#prunedAt = now;
    for (const [key, pair] of this.#pairs) if (pair.active === 0 && now - pair.usedAt > IDLE_MS) this.#pairs.delete(key);
  }
}

/** Tokens back in the pair's bucket for the time since it was last refilled. */
export function refill(pair: Pair, now: number): void {
  if (!pair.rate) return;
  pair.tokens = Math.min(pair.rate.count, pair.tokens + (now - pair.refilledAt) * pair.rate.count / pair.rate.perMs);
  pair.refilledAt = now;
}
