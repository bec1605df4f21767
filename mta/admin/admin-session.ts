/*
 * The dashboard's logins: the admin token given once in a form becomes a session held in a cookie.
 *
 * Takes: the admin token (admin.token) a login offers; the Cookie and X-CSRF-Token headers of
 *   later requests. Gives: sessions with a random id (32 bytes), a per-session CSRF token and an
 *   expiry (admin.dashboard.session, counted from the login); the Set-Cookie value (HttpOnly,
 *   SameSite=Strict, Path=/): a cross-site page never has the cookie sent, and cannot read it.
 *   A request that changes something under a session must also carry the session's CSRF token
 *   in X-CSRF-Token (a header no cross-site form can set), beside admin-guard.ts's JSON and Host
 *   checks. Failed logins are limited (LOGIN_FAILURES a minute) so the token cannot be guessed.
 * Sessions live in memory: a restart logs everyone out. At most MAX_SESSIONS; the oldest goes.
 * RFC 6265bis (SameSite cookies).
 */
import { randomBytes, timingSafeEqual } from 'node:crypto';
import type { IncomingHttpHeaders } from 'node:http';

export const SESSION_COOKIE = 'ichidan_session';
const MAX_SESSIONS = 64;
const LOGIN_FAILURES = 10;

export interface DashboardSession {
  id: string;
  csrf: string;
  expires: number;
}

/** Compares a secret without telling by its timing how much of it matched. */
export function sameSecret(given: string, wanted: string): boolean {
  const a = Buffer.from(given);
  const b = Buffer.from(wanted);
  return a.length === b.length && timingSafeEqual(a, b);
}

function cookieValue(headers: IncomingHttpHeaders, name: string): string | null {
  for (const part of (headers.cookie ?? '').split(';')) {
    const eq = part.indexOf('=');
    if (eq > 0 && part.slice(0, eq).trim() === name) return part.slice(eq + 1).trim();
  }
  return null;
}

export class DashboardSessions {
  readonly #sessions = new Map<string, DashboardSession>();
  #failures: number[] = [];

  constructor(private readonly ttlMs: () => number) {}

  /**
   * A session for a login that gave `token`, or why not: 'refused' (wrong token) or 'limited' (a
   * wrong token after too many failures lately: answered later, not compared). The right token
   * always logs in, so another local user failing on purpose cannot lock the operator out; what
   * keeps guessing hopeless is the token's length (admin.token), not this count.
   */
  login(given: string, token: string, now = Date.now()): DashboardSession | 'refused' | 'limited' {
    this.#failures = this.#failures.filter((at) => now - at < 60_000);
    if (!sameSecret(given, token)) {
      if (this.#failures.length >= LOGIN_FAILURES) return 'limited';
      this.#failures.push(now);
      return 'refused';
    }
    for (const [id, s] of this.#sessions) if (s.expires <= now) this.#sessions.delete(id);
    while (this.#sessions.size >= MAX_SESSIONS) this.#sessions.delete(this.#sessions.keys().next().value!);
    const session = { id: randomBytes(32).toString('base64url'), csrf: randomBytes(32).toString('base64url'), expires: now + this.ttlMs() };
    this.#sessions.set(session.id, session);
    return session;
  }

  /** The live session the request's cookie names, or null. */
  find(headers: IncomingHttpHeaders, now = Date.now()): DashboardSession | null {
    const id = cookieValue(headers, SESSION_COOKIE);
    const session = id === null ? undefined : this.#sessions.get(id);
    if (!session) return null;
    if (session.expires > now) return session;
    this.#sessions.delete(session.id);
    return null;
  }

  /** The request carries the session's CSRF token in X-CSRF-Token. */
  csrfValid(headers: IncomingHttpHeaders, session: DashboardSession): boolean {
    const given = headers['x-csrf-token'];
    return typeof given === 'string' && sameSecret(given, session.csrf);
  }

  end(session: DashboardSession): void {
    this.#sessions.delete(session.id);
  }

  /** The Set-Cookie value that keeps `session`, or (null) clears the cookie. */
  cookie(session: DashboardSession | null, now = Date.now()): string {
    const attrs = 'HttpOnly; SameSite=Strict; Path=/';
    if (!session) return `${SESSION_COOKIE}=; ${attrs}; Max-Age=0`;
    return `${SESSION_COOKIE}=${session.id}; ${attrs}; Max-Age=${Math.max(0, Math.floor((session.expires - now) / 1000))}`;
  }
}
