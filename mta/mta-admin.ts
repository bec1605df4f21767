/*
 * The admin API: operator actions on the running process, over HTTP on a unix socket.
 *
 * Takes: requests on `admin.socket` (default dataDir/admin.sock, mode 0600: whoever may open it
 *   is the operator).
 * Gives: JSON. Routes:
 *   POST /v1/messages/ID/release   held (quarantined) recipients of message ID back into the queue
 * Reading (queue, quarantine, scan records, engine statistics) needs no running process: the
 * CLI reads the queue database directly.
 * Network: none (a unix socket).
 */
import { chmod, rm } from 'node:fs/promises';
import { createServer, request, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { Logger } from 'pino';
import type { Queue } from '../queue/index.js';

const RELEASE = /^\/v1\/messages\/([0-9A-Za-z]{1,64})\/release$/;

export class AdminServer {
  private constructor(private readonly server: Server, readonly path: string) {}

  static async listen(path: string, queue: Queue, log: Logger): Promise<AdminServer> {
    await rm(path, { force: true });
    const server = createServer((req, res) => {
      handle(req, res, queue).catch((err) => {
        log.error({ err }, 'admin request failed');
        reply(res, 500, { error: 'internal error' });
      });
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(path, () => resolve());
    });
    await chmod(path, 0o600);
    return new AdminServer(server, path);
  }

  async close(): Promise<void> {
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
    await rm(this.path, { force: true });
  }
}

function reply(res: ServerResponse, status: number, body: unknown): void {
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(JSON.stringify(body) + '\n');
}

async function handle(req: IncomingMessage, res: ServerResponse, queue: Queue): Promise<void> {
  req.resume();
  const release = RELEASE.exec(req.url ?? '');
  if (release && req.method === 'POST') {
    const released = await queue.releaseMessage(release[1]);
    return reply(res, released > 0 ? 200 : 404, released > 0 ? { released } : { error: `no held recipients in message ${release[1]}` });
  }
  reply(res, 404, { error: `no route ${req.method} ${req.url}` });
}

/** A request to a running process's admin socket; rejects with ENOENT/ECONNREFUSED when none runs. */
export function adminRequest(path: string, method: string, url: string): Promise<{ status: number; body: Record<string, unknown> }> {
  return new Promise((resolve, reject) => {
    const req = request({ socketPath: path, method, path: url }, (res) => {
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
    req.end();
  });
}
