import { describe, expect, it } from 'vitest';
import { DashboardSessions, SESSION_COOKIE } from './admin-session.js';

const TOKEN = 'the-admin-token-0123';

describe('dashboard sessions', () => {
  it('a login with the token gives a session the cookie finds until it expires', () => {
    const sessions = new DashboardSessions(() => 60_000);
    const s = sessions.login(TOKEN, TOKEN, 1_000);
    if (typeof s === 'string') throw new Error(s);
    expect(s.id).toMatch(/^[\w-]{43}$/);
    expect(s.csrf).not.toBe(s.id);
    const headers = { cookie: `other=1; ${SESSION_COOKIE}=${s.id}` };
    expect(sessions.find(headers, 60_999)).toBe(s);
    expect(sessions.find(headers, 61_000)).toBeNull();
    expect(sessions.find(headers, 1_000)).toBeNull();
    expect(sessions.cookie(s, 1_000)).toBe(`${SESSION_COOKIE}=${s.id}; HttpOnly; SameSite=Strict; Path=/; Max-Age=60`);
  });

  it('a wrong token is refused, ten failures in a minute limit wrong ones for the rest of it, and the right one always logs in', () => {
    const sessions = new DashboardSessions(() => 60_000);
    for (let n = 0; n < 10; n++) expect(sessions.login(`wrong-${n}`, TOKEN, 1_000 + n)).toBe('refused');
    expect(sessions.login('wrong-10', TOKEN, 2_000)).toBe('limited');
    expect(typeof sessions.login(TOKEN, TOKEN, 2_000)).toBe('object');
    expect(sessions.login('wrong-11', TOKEN, 61_010)).toBe('refused');
  });

  it('a change needs the session\'s own CSRF token', () => {
    const sessions = new DashboardSessions(() => 60_000);
    const a = sessions.login(TOKEN, TOKEN);
    const b = sessions.login(TOKEN, TOKEN);
    if (typeof a === 'string' || typeof b === 'string') throw new Error('no session');
    expect(sessions.csrfValid({ 'x-csrf-token': a.csrf }, a)).toBe(true);
    expect(sessions.csrfValid({ 'x-csrf-token': b.csrf }, a)).toBe(false);
    expect(sessions.csrfValid({}, a)).toBe(false);
    sessions.end(a);
    expect(sessions.find({ cookie: `${SESSION_COOKIE}=${a.id}` })).toBeNull();
    expect(sessions.find({ cookie: `${SESSION_COOKIE}=${b.id}` })).toBe(b);
  });
});
