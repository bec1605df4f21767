/*
 * A circuit breaker per engine: take a failing engine out of the scan path on its own, and put it
 * back once it answers again.
 *
 *   closed ──(failures within window ≥ threshold)──▶ open ──(cooldown passed)──▶ half-open
 *   half-open ──(the probe scan answers)──▶ closed;  half-open ──(the probe fails)──▶ open
 *
 * Failures are the engine's own: timeout, refused, protocol error, broken connection. What the
 * message causes is not one: a message the engine's server refuses as too large, or one it
 * cannot judge (`unscannable`: MIME it cannot parse, a limit of its own exceeded, a local engine's
 * deadline passed, engines-run.ts). Otherwise any
 * sender could open the breaker, and switch the engine off for everyone, with a few bad messages. While
 * open, the engine is skipped and the verdict counts it as disabled (quorum). In half-open,
 * exactly one scan is let through as the probe; the others skip the engine until it answers.
 *
 * No I/O, no timers: time is passed in, and every transition is reported to `onTransition`
 * (the caller logs it, counts it and writes it to SQLite).
 */
export type BreakerState = 'closed' | 'open' | 'half-open';

export interface BreakerSettings {
  /** Failures within `window` that open the breaker. */
  failures: number;
  window: number;
  /** Time open before one probe scan is let through. */
  cooldown: number;
}

export interface Transition {
  from: BreakerState;
  to: BreakerState;
  reason: string;
  at: number;
}

export type Admission = 'scan' | 'probe' | 'skip';

export class Breaker {
  state: BreakerState = 'closed';
  #recent: number[] = [];
  #openedAt = 0;
  #probing = false;
  lastError: string | null = null;

  constructor(private readonly settings: BreakerSettings, private readonly onTransition: (t: Transition) => void) {}

  /** Whether a scan may use the engine now; 'probe' is the one scan that decides a half-open breaker. */
  admit(now: number): Admission {
    if (this.state === 'closed') return 'scan';
    if (this.state === 'open') {
      if (now - this.#openedAt < this.settings.cooldown) return 'skip';
      this.#move('half-open', `cooldown of ${this.settings.cooldown} ms passed`, now);
    }
    if (this.#probing) return 'skip';
    this.#probing = true;
    return 'probe';
  }

  /** The outcome of an admitted scan. `failure` is null when the engine answered. */
  record(admission: Admission, failure: string | null, now: number): void {
    if (admission === 'skip') return;
    if (admission === 'probe') this.#probing = false;
    if (failure !== null) this.lastError = failure;
    if (this.state === 'half-open') {
      if (admission !== 'probe') return;
      if (failure === null) {
        this.#recent = [];
        this.#move('closed', 'probe scan answered', now);
      } else {
        this.#openedAt = now;
        this.#move('open', `probe scan failed: ${failure}`, now);
      }
      return;
    }
    if (this.state !== 'closed' || failure === null) return;
    this.#recent = this.#recent.filter((t) => now - t < this.settings.window);
    this.#recent.push(now);
    if (this.#recent.length >= this.settings.failures) {
      this.#openedAt = now;
      this.#recent = [];
      this.#move('open', `${this.settings.failures} failures within ${this.settings.window} ms, last: ${failure}`, now);
    }
  }

  /** An admitted scan ended without telling anything about the engine: a probe may be sent again. */
  abandon(admission: Admission): void {
    if (admission === 'probe') this.#probing = false;
  }

  #move(to: BreakerState, reason: string, at: number): void {
    const from = this.state;
    this.state = to;
    this.onTransition({ from, to, reason, at });
  }
}
