/*
 * The client side of the admin API, as the CLI and the tests use it.
 *
 * Takes: the admin socket's path (mta-config.ts `adminSocket`), a method, a URL and an optional
 *   JSON body; `ICHIDAN_ADMIN_TOKEN` from the environment becomes the bearer token.
 * Gives: the status and the parsed JSON answer; rejects with ENOENT or ECONNREFUSED when no
 *   process listens there.
 * Network: the unix socket only.
 */
import { request } from 'node:http';

export function adminRequest(path: string, method: string, url: string, body?: unknown): Promise<{ status: number; body: Record<string, unknown> }> {
  return new Promise((resolve, reject) => {
    // Every request that changes something is JSON, with or without a body (admin-guard.ts).
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
