/*
 * The web dashboard's own routes: its pages and files, and its login.
 *
 *   GET  /                      → /dashboard/
 *   GET  /dashboard/            the single page (index.html); its scripts and styles beside it
 *   GET  /dashboard/vendor/uPlot.esm.js, uPlot.min.css    the charting library, from node_modules/uplot
 *   POST /dashboard/login       {token}: admin.token → 200 {csrf} and the session cookie
 *                               (admin-session.ts); 401 wrong token, 429 too many failures,
 *                               409 without admin.token (the dashboard needs one)
 *   GET  /dashboard/session     the session's CSRF token and expiry (a reloaded page); {csrf: null}
 *                               when not logged in
 *   POST /dashboard/logout      ends the session (needs its CSRF token)
 * Everything else the pages show comes from the admin API's /v1 routes, which take the session
 * cookie in place of the bearer token (admin-server.ts); changes need the CSRF token too.
 * Every answer here carries a strict Content-Security-Policy (scripts, styles and fetches from this
 * origin only, no inline script or style, no framing), nosniff and no-referrer: the pages load
 * nothing from elsewhere. The admin guard's Host and JSON checks apply as to every request.
 * Files: the folder dashboard/ beside this file's source (mta/admin/dashboard/, found from dist/
 * too), read once at start; only the files found then are served (no path is built from a URL).
 * Settings: admin.token, admin.dashboard.enabled, admin.dashboard.session.
 */
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { createRequire } from 'node:module';
import { dirname, extname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Config } from '../mta-config-schema.js';
import { DashboardSessions, type DashboardSession } from './admin-session.js';

export const CSP = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; font-src 'self'; "
  + "base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

const SECURITY_HEADERS = {
  'content-security-policy': CSP,
  'x-content-type-options': 'nosniff',
  'x-frame-options': 'DENY',
  'referrer-policy': 'no-referrer',
  'cross-origin-opener-policy': 'same-origin',
  'cross-origin-resource-policy': 'same-origin',
  'cache-control': 'no-store',
};

const TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.png': 'image/png',
  '.svg': 'image/svg+xml',
};

/** The dashboard's folder: beside the source, or (running from dist/) in the package's mta/admin/. */
export function dashboardFolder(): string {
  const here = dirname(fileURLToPath(import.meta.url));
  const candidates = [join(here, 'dashboard'), join(here, '..', '..', '..', 'mta', 'admin', 'dashboard')];
  const found = candidates.find((c) => existsSync(join(c, 'index.html')));
  if (!found) throw new Error(`the dashboard's files are missing (looked in ${candidates.join(', ')})`);
  return found;
}

function loadFiles(): Map<string, { type: string; body: Buffer }> {
  const files = new Map<string, { type: string; body: Buffer }>();
  const folder = dashboardFolder();
  for (const name of readdirSync(folder)) {
    const type = TYPES[extname(name)];
    if (type) files.set(`/dashboard/${name}`, { type, body: readFileSync(join(folder, name)) });
  }
  files.set('/dashboard/', files.get('/dashboard/index.html')!);
  const uplot = join(dirname(createRequire(import.meta.url).resolve('uplot')), '..', 'dist');
  files.set('/dashboard/vendor/uPlot.esm.js', { type: TYPES['.js'], body: readFileSync(join(uplot, 'uPlot.esm.js')) });
  files.set('/dashboard/vendor/uPlot.min.css', { type: TYPES['.css'], body: readFileSync(join(uplot, 'uPlot.min.css')) });
  return files;
}

export class Dashboard {
  readonly sessions: DashboardSessions;
  #files: Map<string, { type: string; body: Buffer }> | null = null;

  constructor(private readonly config: () => Pick<Config, 'admin'>) {
    this.sessions = new DashboardSessions(() => config().admin.dashboard.session);
  }

  /** The request is the dashboard's own (its pages, files and login), answered by `handle`. */
  static serves(path: string): boolean {
    return path === '/' || path === '/dashboard' || path.startsWith('/dashboard/');
  }

  /** The session a request's cookie names, while the dashboard is on and a token is set. */
  session(req: IncomingMessage): DashboardSession | null {
    const { dashboard, token } = this.config().admin;
    return dashboard.enabled && token !== undefined ? this.sessions.find(req.headers) : null;
  }

  handle(req: IncomingMessage, res: ServerResponse, path: string, body: Record<string, unknown>): void {
    const method = req.method ?? 'GET';
    const { dashboard, token } = this.config().admin;
    if (!dashboard.enabled) return send(res, 404, { error: 'the dashboard is off (admin.dashboard.enabled)' });
    if (method === 'GET' && (path === '/' || path === '/dashboard')) {
      res.writeHead(302, { ...SECURITY_HEADERS, location: '/dashboard/' });
      return void res.end();
    }
    if (path === '/dashboard/login' && method === 'POST') {
      if (token === undefined) return send(res, 409, { error: 'the dashboard needs admin.token: set it, and log in with it' });
      const given = typeof body.token === 'string' ? body.token : '';
      const session = this.sessions.login(given, token);
      if (session === 'limited') return send(res, 429, { error: 'too many failed logins: wait a minute' });
      if (session === 'refused') return send(res, 401, { error: 'wrong token' });
      return send(res, 200, { csrf: session.csrf, expires: session.expires }, { 'set-cookie': this.sessions.cookie(session) });
    }
    if (path === '/dashboard/session' && method === 'GET') {
      // Never hands out the CSRF token: a browser sends the cookie to every port of this address,
      // so a page served from another port can make it send the cookie; only a page of this
      // origin holds the token (kept by the page since its login) and so proves the session live.
      const session = this.session(req);
      const live = session !== null && this.sessions.csrfValid(req.headers, session);
      return send(res, 200, live ? { live: true, expires: session.expires } : { live: false });
    }
    if (path === '/dashboard/logout' && method === 'POST') {
      const session = this.session(req);
      if (!session || !this.sessions.csrfValid(req.headers, session)) return send(res, 403, { error: 'not logged in, or no CSRF token' });
      this.sessions.end(session);
      return send(res, 200, { loggedOut: true }, { 'set-cookie': this.sessions.cookie(null) });
    }
    const file = method === 'GET' ? (this.#files ??= loadFiles()).get(path) : undefined;
    if (!file) return send(res, 404, { error: `no route ${method} ${path}` });
    res.writeHead(200, { ...SECURITY_HEADERS, 'content-type': file.type, 'content-length': file.body.length });
    res.end(file.body);
  }
}

function send(res: ServerResponse, status: number, body: unknown, extra: Record<string, string> = {}): void {
  res.writeHead(status, { ...SECURITY_HEADERS, ...extra, 'content-type': 'application/json' });
  res.end(JSON.stringify(body) + '\n');
}
