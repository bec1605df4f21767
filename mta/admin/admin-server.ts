/*
 * The admin API: operator actions on the running process, as JSON over HTTP.
 *
 * Takes: requests on the unix socket `admin.socket` (default dataDir/admin.sock, mode 0600) and,
 *   when `admin.port` is set, on a loopback TCP port (which needs `admin.token`); with `admin.token`
 *   set, every request must carry `Authorization: Bearer <token>`. Every request must name the
 *   listener in its Host header, and every request that changes something must be JSON
 *   (admin-guard.ts), so a web page in the operator's browser cannot drive the API.
 *   The running process, as the `AdminTarget` the resources declare (the composition root passes
 *   itself).
 * Gives: one route per resource, each in its own file:
 *   /v1/reload                               admin-reload.ts
 *   /v1/engines…                             admin-engines.ts
 *   /v1/messages/ID/release, /v1/queue/…     admin-queue.ts (hold, release, purge)
 *   /v1/queue/messages…, flush|bounce|delete admin-queue-inspect.ts (per message: list, show, why; actions)
 *   /v1/queue/corrupt…                       admin-corrupt.ts
 *   /v1/egress…                              admin-egress.ts
 *   /v1/tenants/…                            admin-tenants.ts
 *   /v1/suppression…                         admin-suppression.ts (list, add, import, remove)
 *   /v1/cluster, /v1/node/drain, /undrain    admin-cluster.ts (cluster status, drain)
 *   /v1/admission                            admin-admission.ts (pressure level and signals)
 *   /v1/senders…                             admin-senders.ts (known senders: list, pin, block, forget)
 *   /metrics                                 admin-metrics.ts
 *   /healthz, /readyz                        admin-health.ts (GET only; no token, any Host: they
 *                                            change nothing and tell only whether mail is taken)
 *   /v1/history                              admin-history.ts (the dashboard's sampled counters)
 *   /v1/quarantine…, /v1/engines/events|stats, /v1/transcripts/ID   admin-records.ts (read-only)
 *   /, /dashboard/…                          admin-dashboard.ts (the web dashboard and its login)
 *   a body of at most 16 KB that must be a JSON object; 400 for a bad field, 404 for no route.
 * Reading the queue, quarantine, scan records and statistics needs no running process: the CLI
 * reads the queue database directly.
 * Network: the unix socket; the optional TCP port binds to a loopback address only.
 */
import { chmod, rm } from 'node:fs/promises';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { Logger } from 'pino';
import type { Config } from '../mta-config-schema.js';
import { admissionRoute, type AdmissionTarget } from './admin-admission.js';
import { clusterRoute, type ClusterTarget } from './admin-cluster.js';
import { corruptRoute, type CorruptTarget } from './admin-corrupt.js';
import { Dashboard } from './admin-dashboard.js';
import { egressRoute, type EgressTarget } from './admin-egress.js';
import { enginesRoute, type EnginesTarget } from './admin-engines.js';
import { refuseRequest, tcpHost } from './admin-guard.js';
import { History, historyRoute, type HistoryTarget } from './admin-history.js';
import { metricsRoute, type MetricsTarget } from './admin-metrics.js';
import { healthRoute, OPEN_PATHS, type HealthTarget } from './admin-health.js';
import { queueRoute, type QueueTarget } from './admin-queue.js';
import { queueInspectRoute, type QueueInspectTarget } from './admin-queue-inspect.js';
import { recordsRoute, type RecordsTarget } from './admin-records.js';
import { reloadRoute, type ReloadTarget } from './admin-reload.js';
import { BadRequest, type AdminAnswer, type AdminRoute } from './admin-request.js';
import { sendersRoute, type SendersTarget } from './admin-senders.js';
import { sameSecret } from './admin-session.js';
import { tenantsRoute, type TenantsTarget } from './admin-tenants.js';
import { suppressionRoute, type SuppressionTarget } from './admin-suppression.js';

/** What the admin API needs of the running process. */
export type AdminTarget = ReloadTarget & EnginesTarget & QueueTarget & QueueInspectTarget & CorruptTarget & EgressTarget & TenantsTarget & SuppressionTarget & MetricsTarget & ClusterTarget & AdmissionTarget & SendersTarget & HealthTarget & HistoryTarget & RecordsTarget & {
  readonly config: Pick<Config, 'admin'>;
};

const ROUTES: AdminRoute<AdminTarget>[] = [healthRoute, reloadRoute, enginesRoute, queueRoute, queueInspectRoute, corruptRoute, egressRoute, tenantsRoute, suppressionRoute, metricsRoute, clusterRoute, admissionRoute, sendersRoute, recordsRoute];
const MAX_BODY = 16 * 1024;
/** How much of an oversized body is read (and dropped) so its 413 can be answered. */
const DRAIN_LIMIT = 1024 * 1024;

export class AdminServer {
  private constructor(private readonly servers: Server[], readonly path: string, readonly history: History) {}

  static async listen(path: string, target: AdminTarget, log: Logger): Promise<AdminServer> {
    const { token, address, port } = target.config.admin;
    // admin.* needs a restart (mta-reload.ts): the dashboard keeps the settings the server started with, as the bearer check does.
    const started = { admin: target.config.admin };
    const dashboard = new Dashboard(() => started);
    const history = new History(target);
    const routes = [...ROUTES, historyRoute(history)];
    const failed = (res: ServerResponse) => (err: unknown) => {
      log.error({ err }, 'admin request failed');
      if (res.headersSent) res.destroy();
      else reply(res, 500, { error: 'internal error' });
    };
    const handler = (hosts: () => string[]) => (req: IncomingMessage, res: ServerResponse) => {
      const method = req.method ?? 'GET';
      const path = (req.url ?? '').split('?')[0];
      if (method === 'GET' && OPEN_PATHS.has(path)) return void answer(req, res);
      const refusal = () => {
        const r = refuseRequest(method, req.headers, hosts());
        if (r) {
          req.resume();
          reply(res, r.status, { error: r.error });
        }
        return r !== null;
      };
      if (Dashboard.serves(path)) {
        if (refusal()) return;
        (method === 'POST' ? readJson(req) : (req.resume(), Promise.resolve({})))
          .then((body) => dashboard.handle(req, res, path, body), (err: Error & { status?: number }) => reply(res, err.status ?? 400, { error: err.message }))
          .catch(failed(res));
        return;
      }
      if (token !== undefined && !authorized(req, token)) {
        const session = dashboard.session(req);
        if (!session) return reply(res, 401, { error: 'a valid bearer token is required' });
        // Reads too: the cookie reaches this port from pages of any port of the address (cookies are
        // per host), so the cookie alone must not open the API; the token is held by this origin only.
        if (!dashboard.sessions.csrfValid(req.headers, session)) {
          req.resume();
          return reply(res, 403, { error: 'a request made with the dashboard\'s session needs its CSRF token (X-CSRF-Token)' });
        }
      }
      if (refusal()) return;
      answer(req, res);
    };
    const answer = (req: IncomingMessage, res: ServerResponse) => handle(req, res, target, routes).catch(failed(res));
    await rm(path, { force: true });
    const servers = [createServer(handler(() => ['localhost']))];
    // exclusive: in a worker (mta-workers.ts) the socket is its own, not held by the primary.
    await listenOn(servers[0], (s, cb) => s.listen({ path, exclusive: true }, cb));
    await chmod(path, 0o600);
    if (port !== undefined) {
      const tcp: Server = createServer(handler((): string[] => {
        const a = tcp.address();
        return typeof a === 'object' && a ? [tcpHost(a.address, a.port)] : [];
      }));
      servers.push(tcp);
      await listenOn(servers[1], (s, cb) => s.listen(port, address, cb));
    }
    if (target.config.admin.dashboard.enabled) history.start();
    return new AdminServer(servers, path, history);
  }

  /** The TCP port, when one is configured (0 in the config picks a free one). */
  get port(): number | null {
    const a = this.servers[1]?.address();
    return typeof a === 'object' && a ? a.port : null;
  }

  async close(): Promise<void> {
    this.history.stop();
    await Promise.all(this.servers.map((s) => new Promise<void>((resolve) => s.close(() => resolve()))));
    await rm(this.path, { force: true });
  }
}

function listenOn(server: Server, start: (s: Server, cb: () => void) => void): Promise<void> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    start(server, () => {
      server.off('error', reject);
      resolve();
    });
  });
}

function authorized(req: IncomingMessage, token: string): boolean {
  return sameSecret(/^Bearer (.+)$/.exec(req.headers.authorization ?? '')?.[1] ?? '', token);
}

function reply(res: ServerResponse, status: number, body: unknown): void {
  res.writeHead(status, { 'content-type': 'application/json', 'x-content-type-options': 'nosniff', 'cache-control': 'no-store' });
  res.end(JSON.stringify(body) + '\n');
}

async function readJson(req: IncomingMessage): Promise<Record<string, unknown>> {
  const parts: Buffer[] = [];
  let size = 0;
  for await (const chunk of req) {
    size += (chunk as Buffer).length;
    // Past the limit the rest is read and dropped, so the 413 reaches the client (leaving the loop
    // early would destroy the socket under it); far past it the connection is cut.
    if (size > DRAIN_LIMIT) throw Object.assign(new Error('request body too large'), { status: 413 });
    if (size <= MAX_BODY) parts.push(chunk as Buffer);
  }
  if (size > MAX_BODY) throw Object.assign(new Error(`request body too large (at most ${MAX_BODY} bytes)`), { status: 413 });
  const text = Buffer.concat(parts).toString('utf8').trim();
  if (!text) return {};
  try {
    const v = JSON.parse(text) as unknown;
    if (v && typeof v === 'object' && !Array.isArray(v)) return v as Record<string, unknown>;
  } catch {
    // answered below
  }
  throw Object.assign(new Error('the body must be a JSON object'), { status: 400 });
}

async function handle(req: IncomingMessage, res: ServerResponse, target: AdminTarget, routes: AdminRoute<AdminTarget>[]): Promise<void> {
  const url = req.url ?? '';
  const method = req.method ?? 'GET';
  let body: Record<string, unknown> = {};
  if (method === 'POST') {
    try {
      body = await readJson(req);
    } catch (err) {
      return reply(res, (err as { status?: number }).status ?? 400, { error: (err as Error).message });
    }
  } else {
    req.resume();
  }
  const [path, query = ''] = url.split('?');
  const request = { method, path, query: new URLSearchParams(query), body };
  let answer: AdminAnswer | null = null;
  try {
    for (const route of routes) {
      answer = await route(request, target);
      if (answer) break;
    }
  } catch (err) {
    if (err instanceof BadRequest) return reply(res, 400, { error: err.message });
    throw err;
  }
  if (!answer) return reply(res, 404, { error: `no route ${method} ${url}` });
  if (Array.isArray(answer)) return reply(res, answer[0], answer[1]);
  res.writeHead(answer.status, { 'content-type': answer.contentType });
  res.end(answer.text);
}
