// The dashboard's login and files over HTTP, where they can fail: no admin.token (409), the
// dashboard switched off (404), another Host (421), a login that is not JSON (415), guessing the
// token (429 after ten failures, even for the right one), a path outside the dashboard's own
// files (404), logging out (the CSRF token needed; the cookie then no longer opens the API).
import { request } from 'node:http';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { baseConfig, startApp, type TestApp } from './helpers/app.js';

const TOKEN = 'dashboard-api-token-0123456789';

type Target = { port: number } | { socketPath: string };
interface Answer { status: number; headers: Record<string, string | string[] | undefined>; body: string }

function call(target: Target, method: string, path: string, headers: Record<string, string>, body?: string): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = request({ ...target, method, path, headers, setHost: false, agent: false }, (res) => {
      let text = '';
      res.on('data', (d) => { text += d; });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: text }));
    });
    req.on('error', reject);
    req.end(body);
  });
}

describe('the dashboard\'s login and files', () => {
  let t: TestApp | undefined;
  afterEach(async () => { await t?.stop(); t = undefined; });

  const json = { 'content-type': 'application/json' };

  it('needs admin.token to log in (409), and answers nothing when switched off (404)', async () => {
    t = await startApp((dir) => baseConfig(dir));
    const unix = { socketPath: join(t.dataDir, 'admin.sock') };
    const login = await call(unix, 'POST', '/dashboard/login', { host: 'localhost', ...json }, '{"token":"anything-at-all-here"}');
    expect(login.status).toBe(409);
    expect(login.body).toContain('admin.token');
    expect((await call(unix, 'GET', '/dashboard/', { host: 'localhost' })).status).toBe(200);
    await t.stop();
    t = await startApp((dir) => baseConfig(dir, { admin: { port: 0, token: TOKEN, dashboard: { enabled: false } } }));
    const tcp = { port: t.app.adminPort! };
    const host = `127.0.0.1:${t.app.adminPort}`;
    expect((await call(tcp, 'GET', '/dashboard/', { host })).status).toBe(404);
    expect((await call(tcp, 'POST', '/dashboard/login', { host, ...json }, JSON.stringify({ token: TOKEN }))).status).toBe(404);
  });

  it('keeps the admin guard, serves its own files only, limits guessing, and logs out with the CSRF token', async () => {
    t = await startApp((dir) => baseConfig(dir, { admin: { port: 0, token: TOKEN } }));
    const tcp = { port: t.app.adminPort! };
    const host = `127.0.0.1:${t.app.adminPort}`;
    expect((await call(tcp, 'GET', '/dashboard/', { host: 'attacker.example' })).status).toBe(421);
    expect((await call(tcp, 'POST', '/dashboard/login', { host, 'content-type': 'text/plain' }, JSON.stringify({ token: TOKEN }))).status).toBe(415);
    for (const path of ['/dashboard/../package.json', '/dashboard/%2e%2e/%2e%2e/package.json', '/dashboard/vendor/uPlot.cjs.js', '/dashboard/admin-dashboard.ts']) {
      expect((await call(tcp, 'GET', path, { host })).status, path).toBe(404);
    }
    const page = await call(tcp, 'GET', '/', { host });
    expect(page.status).toBe(302);
    expect(page.headers.location).toBe('/dashboard/');

    const login = await call(tcp, 'POST', '/dashboard/login', { host, ...json }, JSON.stringify({ token: TOKEN }));
    expect(login.status).toBe(200);
    const cookie = String(login.headers['set-cookie']).split(';')[0];
    const { csrf } = JSON.parse(login.body) as { csrf: string };
    // The cookie alone opens nothing (a page of another port on this address can make the browser
    // send it): every request made with it carries the session's CSRF token, which is never served again.
    expect((await call(tcp, 'GET', '/v1/engines', { host, cookie })).status).toBe(403);
    expect((await call(tcp, 'GET', '/v1/engines', { host, cookie, 'x-csrf-token': 'guessed' })).status).toBe(403);
    expect((await call(tcp, 'GET', '/v1/engines', { host, cookie, 'x-csrf-token': csrf })).status).toBe(200);
    expect(JSON.parse((await call(tcp, 'GET', '/dashboard/session', { host, cookie })).body)).toEqual({ live: false });
    const live = JSON.parse((await call(tcp, 'GET', '/dashboard/session', { host, cookie, 'x-csrf-token': csrf })).body) as Record<string, unknown>;
    expect(live).toMatchObject({ live: true });
    expect(live.csrf).toBeUndefined();
    expect((await call(tcp, 'POST', '/dashboard/logout', { host, cookie, ...json }, '{}')).status).toBe(403);
    const out = await call(tcp, 'POST', '/dashboard/logout', { host, cookie, 'x-csrf-token': csrf, ...json }, '{}');
    expect(out.status).toBe(200);
    expect(String(out.headers['set-cookie'])).toContain('Max-Age=0');
    expect((await call(tcp, 'GET', '/v1/engines', { host, cookie, 'x-csrf-token': csrf })).status).toBe(401);
    expect(JSON.parse((await call(tcp, 'GET', '/dashboard/session', { host, cookie, 'x-csrf-token': csrf })).body)).toEqual({ live: false });

    for (let n = 0; n < 10; n++) {
      expect((await call(tcp, 'POST', '/dashboard/login', { host, ...json }, JSON.stringify({ token: `guess-${n}` }))).status).toBe(401);
    }
    expect((await call(tcp, 'POST', '/dashboard/login', { host, ...json }, JSON.stringify({ token: 'guess-10' }))).status).toBe(429);
    // Failures by anyone else cannot lock the operator out: the right token still logs in.
    expect((await call(tcp, 'POST', '/dashboard/login', { host, ...json }, JSON.stringify({ token: TOKEN }))).status).toBe(200);
    // The bearer token still works meanwhile: the limit is on logins only.
    expect((await call(tcp, 'GET', '/v1/engines', { host, authorization: `Bearer ${TOKEN}` })).status).toBe(200);
  });
});
