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
 * Password checks run on the thread pool (mta-auth-hash.ts); a saturated pool gives 454 4.7.0.
 * An unknown user is checked against a hash nothing matches, so timing tells nothing either.
 * RFC 4954 (AUTH replies), RFC 3463. Settings: auth.*, users.
 */
import { randomBytes } from 'node:crypto';
import bcrypt from 'bcryptjs';
import { RecentEvents, clientKey } from './mta-anvil.js';
import type { PasswordVerifier } from './mta-auth-hash.js';
import type { Config } from './mta-config-schema.js';
import { REPLIES, type SmtpReply } from './mta-reply.js';

/** A hash that no password matches, compared when the user is unknown. */
const DUMMY_HASH = bcrypt.hashSync(randomBytes(16).toString('hex'), 10);

/** Longest account name kept as a key: longer ones are cut, so a client cannot grow memory with them. */
const MAX_NAME = 256;

export type AuthOutcome =
  | { ok: true; user: string }
  | { ok: false; reply: SmtpReply; delayMs: number; close: boolean; why: 'invalid' | 'blocked' | 'busy' | 'error' };

export interface AuthAttempt {
  username: string;
  password: string;
  address: string;
  /** Failures of this session before this attempt. */
  sessionFailures: number;
  exempt: boolean;
}

export class AuthGuard {
  readonly #byAddress = new RecentEvents();
  readonly #byAccount = new RecentEvents();
  readonly #blocked = new Map<string, number>();

  constructor(private readonly verifier: PasswordVerifier) {}

  async authenticate(attempt: AuthAttempt, config: Config): Promise<AuthOutcome> {
    const settings = config.auth;
    const now = Date.now();
    const addressKey = `a:${clientKey(attempt.address)}`;
    const accountKey = `u:${attempt.username.slice(0, MAX_NAME).toLowerCase()}`;
    const keys = attempt.exempt ? [accountKey] : [addressKey, accountKey];
    const recent = () => Math.max(this.#byAccount.count(accountKey, settings.window), attempt.exempt ? 0 : this.#byAddress.count(addressKey, settings.window));
    const close = attempt.sessionFailures + 1 >= settings.sessionFailures;
    if (keys.some((k) => this.#isBlocked(k, now))) {
      return { ok: false, reply: close ? REPLIES.authTooManyFailures : REPLIES.authUnavailable, delayMs: delayFor(recent(), settings), close, why: 'blocked' };
    }
    const user = config.users.find((u) => u.name === attempt.username);
    const check = this.verifier.verify(attempt.password, user?.password ?? DUMMY_HASH);
    if (check === null) return { ok: false, reply: REPLIES.authUnavailable, delayMs: 0, close: false, why: 'busy' };
    let ok: boolean;
    try {
      ok = await check;
    } catch {
      return { ok: false, reply: REPLIES.authUnavailable, delayMs: 0, close: false, why: 'error' };
    }
    if (ok && user) {
      this.#byAccount.clear(accountKey);
      return { ok: true, user: user.name };
    }
    const accountFailures = this.#byAccount.add(accountKey, settings.window);
    const addressFailures = attempt.exempt ? 0 : this.#byAddress.add(addressKey, settings.window);
    if (accountFailures >= settings.maxFailures) this.#block(accountKey, now + settings.block);
    if (addressFailures >= settings.maxFailures) this.#block(addressKey, now + settings.block);
    const worst = Math.max(accountFailures, addressFailures);
    return { ok: false, reply: close ? REPLIES.authTooManyFailures : REPLIES.authInvalid, delayMs: delayFor(worst, settings), close, why: 'invalid' };
  }

  #isBlocked(key: string, now: number): boolean {
    const until = this.#blocked.get(key);
    if (until === undefined) return false;
    if (until > now) return true;
    this.#blocked.delete(key);
    return false;
  }

  #block(key: string, until: number): void {
    this.#blocked.delete(key);
    this.#blocked.set(key, until);
    // Blocks end by themselves; the oldest are dropped first if an attacker makes too many.
    if (this.#blocked.size > 100_000) this.#blocked.delete(this.#blocked.keys().next().value!);
  }
}

/** failureDelay × 2^(failures − 1), capped at maxDelay. */
export function delayFor(failures: number, settings: Config['auth']): number {
  if (failures <= 0) return settings.failureDelay;
  return Math.min(settings.maxDelay, settings.failureDelay * 2 ** Math.min(failures - 1, 30));
}
