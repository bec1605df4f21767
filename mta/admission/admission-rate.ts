/*
 * A rate against its normal level: how a surge shows. Two of the pressure signals are one: MX
 * queries to the DNS responder (the paper's trigger for high-load mode; `mxQueryRatio()`) and
 * connections to the admission listeners, refused ones included (admission.ts `connectionRatio()`),
 * which keep counting while the door turns a flood away, so the level does not fall while the
 * flood goes on.
 *
 * Takes: one `hit()` per event (an MX question answered for a hosted domain, a connection), the
 *   clock (injectable) and how long to learn before giving a ratio (admission.pressure.learnAfter).
 * Gives: `ratio()`: events per second over the last WINDOW seconds divided by the normal rate, an
 * exponentially weighted mean of the per-second counts with a time constant of NORMAL_TAU seconds
 * (the plain mean while less history exists); null until `learnAfter` of history exists. Compared
 * with admission.pressure.mxQueries and admission.pressure.connections.
 *
 * The normal rate is floored at MIN_NORMAL events per second, so that on a quiet domain a couple
 * of queries in a row are no surge. While the short-window rate is past SURGE_RATIO times the normal
 * one, the normal rate learns ten times slower: a flood does not become normal within minutes,
 * while a lasting change of traffic still does, in an hour or so.
 */

/** Seconds of the short window the current rate is measured over. */
export const WINDOW = 10;
/** Seconds: the normal rate's time constant. */
export const NORMAL_TAU = 600;
/** Seconds of history before a ratio is given, by default. */
export const LEARN_AFTER = 300;
/** Events per second the normal rate is never taken to be below. */
export const MIN_NORMAL = 0.1;
/** Past this many times the normal rate, the normal rate learns ten times slower. */
export const SURGE_RATIO = 2;
/**
 * Events per second the normal rate is taken to be at least when the rate since the last look is
 * compared with it (`recentRatio`): over a tenth of a second a few events together are no surge.
 */
export const RECENT_MIN_NORMAL = 20;

export class NormalRate {
  readonly #counts = new Array<number>(WINDOW).fill(0);
  /** The second (since the epoch) the last slot of `#counts` belongs to. */
  #second: number;
  readonly #start: number;
  /** Events since `recentRatio` was last asked, and since when. */
  #recent = 0;
  #recentSince: number;
  #normal = 0;

  /** Seconds of history before a ratio is given. */
  readonly #learnAfter: number;

  constructor(private readonly now: () => number = Date.now, learnAfterMs = LEARN_AFTER * 1000) {
    this.#learnAfter = Math.max(1, Math.round(learnAfterMs / 1000));
    this.#second = Math.floor(now() / 1000);
    this.#start = this.#second;
    this.#recentSince = now();
  }

  /** `n` events now (one by default). */
  hit(n = 1): void {
    this.#advance();
    this.#counts[this.#second % WINDOW] += n;
    this.#recent += n;
  }

  /**
   * The rate since the last call (a flood's first tenth of a second, read every surgeInterval)
   * against the normal rate, floored at RECENT_MIN_NORMAL; null while the normal rate is being
   * learned. Starts the next span.
   */
  recentRatio(): number | null {
    const now = this.now();
    const seconds = Math.max(0.05, (now - this.#recentSince) / 1000);
    const count = this.#recent;
    this.#recent = 0;
    this.#recentSince = now;
    const normal = this.normal();
    return normal === null ? null : count / seconds / Math.max(normal, RECENT_MIN_NORMAL);
  }

  /** Events per second over the last WINDOW seconds (the current, partial second included). */
  current(): number {
    this.#advance();
    const seconds = Math.min(WINDOW, this.#second - this.#start + 1);
    return this.#counts.reduce((a, b) => a + b, 0) / seconds;
  }

  /** The learned normal rate (events per second), or null while too little history exists. */
  normal(): number | null {
    this.#advance();
    return this.#second - this.#start >= this.#learnAfter ? Math.max(this.#normal, MIN_NORMAL) : null;
  }

  ratio(): number | null {
    const normal = this.normal();
    return normal === null ? null : this.current() / normal;
  }

  /** Closes every whole second up to now: each one's count feeds the normal rate, its slot is cleared for reuse. */
  #advance(): void {
    const second = Math.floor(this.now() / 1000);
    const alpha = 1 - Math.exp(-1 / NORMAL_TAU);
    for (let s = this.#second; s < second; s++) {
      const slot = (s + 1) % WINDOW;
      if (s - this.#second >= WINDOW) {
        // A long quiet spell: every further second counted nothing; decay in one step.
        this.#normal *= (1 - alpha) ** (second - s);
        break;
      }
      const count = this.#counts[s % WINDOW];
      const seen = s - this.#start + 1;
      const windowRate = this.#counts.reduce((a, b) => a + b, 0) / Math.min(WINDOW, seen);
      const surging = seen > this.#learnAfter && windowRate > SURGE_RATIO * Math.max(this.#normal, MIN_NORMAL);
      // The plain mean of the seconds seen until there are NORMAL_TAU of them, so the start is not biased to zero.
      const weight = Math.max(alpha, 1 / seen);
      // A surge moves it at a tenth of the long-run pace however short the history: learned over a
      // brief normal phase, the plain mean's large steps would soon take a flood for normal.
      this.#normal += (surging ? alpha / 10 : weight) * (count - this.#normal);
      this.#counts[slot] = 0;
    }
    if (second > this.#second) {
      if (second - this.#second >= WINDOW) this.#counts.fill(0);
      this.#second = second;
    }
  }
}
