/*
 * AUTH: checking a user's password, and the penalties that make guessing slow and pointless.
 *
 * Takes: the user name and password a client gave, its address, how many times it already failed
 * in this session, whether its address is exempt from per-address limits, the current `users` and
 * `auth` settings. Gives: an outcome as data — the user, or the reply, how long to wait before
 * sending it and whether to close the session.
 *
 * Failures are counted per client address and per account (the name as given, known or not, so
 * the replies do not tell which names exist) over `auth.window`:
 * - each failure's 535 5.7.8 waits `failureDelay`, doubled per recent failure of the address or
 *   account, up to `maxDelay` (Dovecot's auth penalty);
 * - the `sessionFailures`-th failure (or refusal while blocked) in one session is answered
 *   421 4.7.0 and the session closed;
 * - `maxFailures` within the window blocks the address (unless exempt: trusted networks share an
 *   address among many users) and the account (never exempt) for `auth.block`. While blocked,
 *   every attempt gets 454 4.7.0 after the same delay whatever the password — no password is
 *   checked, so a guess made during the block cannot be confirmed, and the right password gets
 *   through once the block ends. A success clears the account's failures, not the address's.
 * - the penalty belongs to the address and the account, not to the session: every answer (a
 *   success too) waits until the previous failure's delay for its address or account has run out
 *   (at most `maxDelay`), so hanging up during a delay and trying again on a new connection, or
 *   guessing on many connections at once, gains nothing. A failure is counted when its check
 *   ends, before its delay, whether or not the client stays for the answer.
 * An IPv6 client's address is counted by its prefix (limits.client.ipv6Prefix, default /64).
 * Memory: failure counters per key for `window` (the longest-unseen forgotten first past 100,000
 *   keys), swept once a minute; blocks and pending delays until they end, swept likewise. Blocks are
 *   never dropped early: each costs `maxFailures` password checks, which the thread pool
 *   (auth.workers, auth.queue) bounds, so their number is bounded too.
 * Password checks run on the thread pool (ingress-auth-hash.ts); a saturated pool gives 454 4.7.0.
 * An unknown user is checked against a hash nothing matches, so timing tells nothing either.
 * With `auth.backend: dovecot` Dovecot's auth service checks every login instead
 * (ingress-auth-dovecot.ts), under the same penalties and blocks; at most `auth.queue` checks wait
 * for its answers (past that, 454 4.7.0), a temporary failure, a late answer or an unreachable
 * Dovecot give 454 4.7.0, and a login Dovecot accepts whose tenant cannot be told (auth.backend
 * tenant, domains) is refused as invalid, with a warning.
 * RFC 4954 (AUTH replies), RFC 3463. Settings: auth.*, users, limits.client.ipv6Prefix.
 */
import { randomBytes } from 'node:crypto';
import bcrypt from 'bcryptjs';
import { RecentEvents, SWEEP_EVERY, clientKey } from './ingress-anvil.js';
import type { PasswordVerifier } from './ingress-auth-hash.js';
import type { DovecotClients } from './ingress-auth-dovecot.js';
import { tenantOfLogin } from './ingress-policy.js';
import type { Config } from '../mta-config-schema.js';
import { REPLIES, type SmtpReply } from '../../base/base-reply.js';

/** A hash that no password matches, compared when the user is unknown. */
const DUMMY_HASH = bcrypt.hashSync(randomBytes(16).toString('hex'), 10);

/** Longest account name kept as a key: longer ones are cut, so a client cannot grow memory with them. */
const MAX_NAME = 256;

export type AuthOutcome =
  | { ok: true; user: string; delayMs: number }
  | { ok: false; reply: SmtpReply; delayMs: number; close: boolean; why: 'invalid' | 'blocked' | 'busy' | 'error' };

export interface AuthAttempt {
  username: string;
  password: string;
  address: string;
  /** Failures of this session before this attempt. */
  sessionFailures: number;
  exempt: boolean;
}

/** Times until which keys stay marked (blocks, pending delays); ended ones are swept once a minute. */
export class Expiring {
  readonly #until = new Map<string, number>();
  #swept = 0;

  get size(): number {
    return this.#until.size;
  }

  /** The time `key` is marked until, or 0 when it is not (any more). */
  until(key: string, now: number): number {
    this.#sweep(now);
    const until = this.#until.get(key) ?? 0;
    if (until > now) return until;
    this.#until.delete(key);
    return 0;
  }

  mark(key: string, until: number, now: number): void {
    this.#sweep(now);
    if (until > (this.#until.get(key) ?? 0)) this.#until.set(key, until);
  }

  #sweep(now: number): void {
    if (now - this.#swept < SWEEP_EVERY) return;
    this.#swept = now;
    for (const [key, until] of this.#until) if (until <= now) this.#until.delete(key);
  }
}

export class AuthGuard {
  readonly #byAddress = new RecentEvents();
  readonly #byAccount = new RecentEvents();
  readonly #blocked = new Expiring();
  /** When the last failure's delay for a key runs out: the next answer for that key waits for it. */
  readonly #answerAt = new Expiring();

  constructor(
    private readonly verifier: PasswordVerifier,
    private readonly clock: () => number = Date.now,
    private readonly dovecot: DovecotClients | null = null,
    private readonly warn: (entry: Record<string, unknown>, message: string) => void = () => undefined,
  ) {}

  /** The check of one password: the user's name when it is right, null when not; null when no check could start (busy). */
  #check(attempt: AuthAttempt, config: Config): Promise<string | null> | null {
    const backend = config.auth.backend;
    if (backend.type === 'dovecot' && this.dovecot) {
      const client = this.dovecot.client(backend.socket, { timeout: backend.timeout, maxPending: config.auth.queue });
      const answer = client.authenticate(attempt);
      return answer && answer.then((a) => {
        if (!a.ok) return null;
        const user = a.user || attempt.username;
        if (tenantOfLogin(user, backend) !== undefined) return user;
        this.warn({ user }, 'Dovecot accepted a login whose tenant is not configured (auth.backend.tenant, auth.backend.domains): refused');
        return null;
      });
    }
    const user = config.users.find((u) => u.name === attempt.username);
    const check = this.verifier.verify(attempt.password, user?.password ?? DUMMY_HASH);
    return check && check.then((ok) => (ok && user ? user.name : null));
  }

  async authenticate(attempt: AuthAttempt, config: Config): Promise<AuthOutcome> {
    const settings = config.auth;
    const now = this.clock();
    const addressKey = `a:${clientKey(attempt.address, config.limits.client.ipv6Prefix)}`;
    const accountKey = `u:${attempt.username.slice(0, MAX_NAME).toLowerCase()}`;
    const keys = attempt.exempt ? [accountKey] : [addressKey, accountKey];
    const recent = () => Math.max(this.#byAccount.count(accountKey, settings.window, now), attempt.exempt ? 0 : this.#byAddress.count(addressKey, settings.window, now));
    const close = attempt.sessionFailures + 1 >= settings.sessionFailures;
    const answerFrom = now + Math.min(settings.maxDelay, Math.max(0, ...keys.map((k) => this.#answerAt.until(k, now) - now)));
    /** The wait, from `at`, for an answer given at `at`; a failure's own delay also holds back the next answers for its keys. */
    const waitFrom = (at: number, delay = 0) => {
      const delayMs = Math.max(0, answerFrom - at) + delay;
      if (delay > 0) for (const k of keys) this.#answerAt.mark(k, at + delayMs, at);
      return delayMs;
    };
    if (keys.some((k) => this.#blocked.until(k, now) > 0)) {
      return { ok: false, reply: close ? REPLIES.authTooManyFailures : REPLIES.authUnavailable, delayMs: waitFrom(now, delayFor(recent(), settings)), close, why: 'blocked' };
    }
    const check = this.#check(attempt, config);
    if (check === null) return { ok: false, reply: REPLIES.authUnavailable, delayMs: waitFrom(now), close: false, why: 'busy' };
    let user: string | null;
    try {
      user = await check;
    } catch (err) {
      this.warn({ err: (err as Error).message }, 'password check failed');
      return { ok: false, reply: REPLIES.authUnavailable, delayMs: waitFrom(this.clock()), close: false, why: 'error' };
    }
    const checked = this.clock();
    if (user !== null) {
      this.#byAccount.clear(accountKey);
      return { ok: true, user, delayMs: waitFrom(checked) };
    }
    const accountFailures = this.#byAccount.add(accountKey, settings.window, checked);
    const addressFailures = attempt.exempt ? 0 : this.#byAddress.add(addressKey, settings.window, checked);
    if (accountFailures >= settings.maxFailures) this.#blocked.mark(accountKey, checked + settings.block, checked);
    if (addressFailures >= settings.maxFailures) this.#blocked.mark(addressKey, checked + settings.block, checked);
    const worst = Math.max(accountFailures, addressFailures);
    return { ok: false, reply: close ? REPLIES.authTooManyFailures : REPLIES.authInvalid, delayMs: waitFrom(checked, delayFor(worst, settings)), close, why: 'invalid' };
  }
}

/** failureDelay × 2^(failures − 1), capped at maxDelay. */
export function delayFor(failures: number, settings: Config['auth']): number {
  if (failures <= 0) return settings.failureDelay;
  return Math.min(settings.maxDelay, settings.failureDelay * 2 ** Math.min(failures - 1, 30));
}
