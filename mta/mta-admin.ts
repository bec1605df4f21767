/*
 * The admin API: operator actions on the running process, as JSON over HTTP.
 *
 * Takes: requests on the unix socket `admin.socket` (default dataDir/admin.sock, mode 0600) and,
 *   when `admin.port` is set, on a loopback TCP port (which needs `admin.token`); with `admin.token`
 *   set, every request must carry `Authorization: Bearer <token>`. Every request must name the
 *   listener in its Host header, and every request that changes something must be JSON
 *   (mta-admin-guard.ts), so a web page in the operator's browser cannot drive the API.
 * Gives:
 *   POST /v1/reload                     re-read the config file (200 with the new generation and
 *                                       what needs a restart; 422 with the problems, nothing changed)
 *   GET  /v1/engines                    each engine: state, breaker, last error, version, counters
 *   POST /v1/engines/NAME/disable       body {"reason": "..."}: skipped from the next scan on (persisted)
 *   POST /v1/engines/NAME/enable
 *   POST /v1/messages/ID/release        held (quarantined) recipients of message ID back into the queue
 *   GET  /metrics                       Prometheus text format
 *   /v1/egress…, /v1/queue/…, /v1/tenants/… outbound holds, purges, suspensions, throttle events
 *                                       (mta-admin-egress.ts)
 * Reading the queue, quarantine, scan records and statistics needs no running process: the CLI
 * reads the queue database directly.
 * Network: the unix socket; the optional TCP port binds to a loopback address only.
 */
import { timingSafeEqual } from 'node:crypto';
import { chmod, rm } from 'node:fs/promises';
import { createServer, request, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { Logger } from 'pino';
import type { Ichidan } from './index.js';
import { handleEgress } from './mta-admin-egress.js';
import { refuseRequest, tcpHost } from './mta-admin-guard.js';

const RELEASE = /^\/v1\/messages\/([0-9A-Za-z]{1,64})\/release$/;
const ENGINE = /^\/v1\/engines\/([A-Za-z0-9_-]{1,64})\/(disable|enable)$/;
const MAX_BODY = 16 * 1024;

export class AdminServer {
  private constructor(private readonly servers: Server[], readonly path: string) {}

  static async listen(path: string, app: Ichidan, log: Logger): Promise<AdminServer> {
    const { token, address, port } = app.config.admin;
    const handler = (hosts: () => string[]) => (req: IncomingMessage, res: ServerResponse) => {
      if (token !== undefined && !authorized(req, token)) return reply(res, 401, { error: 'a valid bearer token is required' });
      const refusal = refuseRequest(req.method ?? 'GET', req.headers, hosts());
      if (refusal) {
        req.resume();
        return reply(res, refusal.status, { error: refusal.error });
      }
      handle(req, res, app).catch((err) => {
        log.error({ err }, 'admin request failed');
        if (res.headersSent) res.destroy();
        else reply(res, 500, { error: 'internal error' });
      });
    };
    await rm(path, { force: true });
    const servers = [createServer(handler(() => ['localhost']))];
    await listenOn(servers[0], (s, cb) => s.listen(path, cb));
    await chmod(path, 0o600);
    if (port !== undefined) {
      const tcp: Server = createServer(handler((): string[] => {
        const a = tcp.address();
        return typeof a === 'object' && a ? [tcpHost(a.address, a.port)] : [];
      }));
      servers.push(tcp);
      await listenOn(servers[1], (s, cb) => s.listen(port, address, cb));
    }
    return new AdminServer(servers, path);
  }

  /** The TCP port, when one is configured (0 in the config picks a free one). */
  get port(): number | null {
    const a = this.servers[1]?.address();
    return typeof a === 'object' && a ? a.port : null;
  }

  async close(): Promise<void> {
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
  const given = Buffer.from(/^Bearer (.+)$/.exec(req.headers.authorization ?? '')?.[1] ?? '');
  const wanted = Buffer.from(token);
  return given.length === wanted.length && timingSafeEqual(given, wanted);
}

function reply(res: ServerResponse, status: number, body: unknown): void {
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(JSON.stringify(body) + '\n');
}

async function readJson(req: IncomingMessage): Promise<Record<string, unknown>> {
  const parts: Buffer[] = [];
  let size = 0;
  for await (const chunk of req) {
    size += (chunk as Buffer).length;
    if (size > MAX_BODY) throw Object.assign(new Error('request body too large'), { status: 413 });
    parts.push(chunk as Buffer);
  }
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

async function handle(req: IncomingMessage, res: ServerResponse, app: Ichidan): Promise<void> {
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
  if (method === 'POST' && url === '/v1/reload') {
    const result = app.reload();
    return reply(res, result.ok ? 200 : 422, result);
  }
  if (method === 'GET' && url === '/v1/engines') return reply(res, 200, { generation: app.generation, engines: app.engines.list() });
  const engine = ENGINE.exec(url);
  if (method === 'POST' && engine) {
    const [, name, action] = engine;
    if (action === 'disable') {
      const reason = typeof body.reason === 'string' && body.reason.trim() ? body.reason.trim().slice(0, 500) : 'no reason given';
      return app.engines.disable(name, reason)
        ? reply(res, 200, { engine: name, state: 'disabled', reason })
        : reply(res, 404, { error: `no engine named ${name}` });
    }
    return app.engines.enable(name)
      ? reply(res, 200, { engine: name, state: 'enabled' })
      : reply(res, 404, { error: `engine ${name} is not disabled` });
  }
  const release = RELEASE.exec(url);
  if (method === 'POST' && release) {
    const released = await app.queue.releaseMessage(release[1]);
    return reply(res, released > 0 ? 200 : 404, released > 0 ? { released } : { error: `no held recipients in message ${release[1]}` });
  }
  if (method === 'GET' && url === '/metrics') {
    const text = await app.metrics.metrics();
    res.writeHead(200, { 'content-type': app.metrics.contentType });
    res.end(text);
    return;
  }
  const egress = await handleEgress(method, url, body, app);
  if (egress) return reply(res, egress[0], egress[1]);
  reply(res, 404, { error: `no route ${method} ${url}` });
}

/** A request to a running process's admin socket; rejects with ENOENT/ECONNREFUSED when none runs. */
export function adminRequest(path: string, method: string, url: string, body?: unknown): Promise<{ status: number; body: Record<string, unknown> }> {
  return new Promise((resolve, reject) => {
    // Every request that changes something is JSON, with or without a body (mta-admin-guard.ts).
    const payload = body === undefined ? (method === 'GET' ? undefined : '{}') : JSON.stringify(body);
    const headers: Record<string, string> = payload ? { 'content-type': 'application/json' } : {};
    if (process.env.ICHIDAN_ADMIN_TOKEN) headers.authorization = `Bearer ${process.env.ICHIDAN_ADMIN_TOKEN}`;
    const req = request({ socketPath: path, method, path: url, headers }, (res) => {
      const parts: Buffer[] = [];
      res.on('data', (c: Buffer) => parts.push(c));
      res.on('end', () => {
        try {
          resolve({ status: res.statusCode ?? 0, body: JSON.parse(Buffer.concat(parts).toString() || '{}') });
        } catch (err) {
          reject(err);
        }
      });
    });
    req.on('error', reject);
    req.end(payload);
  });
}
