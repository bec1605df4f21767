// The admin API cannot be driven by a web page: the Host must be the listener's, a change must be
// JSON, and a TCP port without a token is a config error.
import { request } from 'node:http';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { adminRequest, baseConfig, parseConfig, startApp, type TestApp } from './helpers/app.js';

const TOKEN = 'a-token-of-some-length';

type Target = { port: number } | { socketPath: string };

function call(target: Target, method: string, path: string, headers: Record<string, string>, body?: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = request({ ...target, host: '127.0.0.1', method, path, headers, setHost: false, agent: false }, (res) => {
      let text = '';
      res.on('data', (d) => { text += d; });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: text }));
    });
    req.on('error', reject);
    req.end(body);
  });
}

describe('admin API request guard', () => {
  let t: TestApp;
  let tcp: Target;
  let unix: Target;
  let host: string;

  beforeAll(async () => {
    t = await startApp((dir) => baseConfig(dir, { admin: { port: 0, token: TOKEN } }));
    tcp = { port: t.app.adminPort! };
    unix = { socketPath: join(t.dataDir, 'admin.sock') };
    host = `127.0.0.1:${t.app.adminPort}`;
  });
  afterAll(async () => { await t?.stop(); });

  const auth = { authorization: `Bearer ${TOKEN}` };

  it('answers a request naming its own address:port', async () => {
    expect((await call(tcp, 'GET', '/v1/engines', { ...auth, host })).status).toBe(200);
  });

  it.each([
    ['another name (DNS rebinding)', 'attacker.example:PORT'],
    ['localhost on the TCP port', 'localhost:PORT'],
    ['another port', '127.0.0.1:1'],
  ])('refuses %s with 421', async (_name, given) => {
    const headers: Record<string, string> = { ...auth };
    if (given) headers.host = given.replace('PORT', String(t.app.adminPort));
    const res = await call(tcp, 'GET', '/v1/engines', headers);
    expect(res.status).toBe(421);
  });

  it('refuses a request without Host (Node answers 400 before the handler)', async () => {
    expect((await call(tcp, 'GET', '/v1/engines', { ...auth })).status).toBe(400);
  });

  it.each([
    ['a form', 'application/x-www-form-urlencoded', 'reason=x'],
    ['a multipart form', 'multipart/form-data; boundary=b', '--b--'],
    ['text', 'text/plain', '{"reason":"x"}'],
    ['no type', '', '{"reason":"x"}'],
  ])('refuses a state-changing request sent as %s with 415, and changes nothing', async (_name, type, body) => {
    const headers: Record<string, string> = { ...auth, host };
    if (type) headers['content-type'] = type;
    for (const method of ['POST', 'PUT', 'DELETE']) {
      const res = await call(tcp, method, '/v1/engines/ghost/disable', headers, body);
      expect(res.status).toBe(415);
    }
  });

  it('takes JSON, and the unix socket takes Host localhost only', async () => {
    const json = await call(tcp, 'POST', '/v1/engines/ghost/disable', { ...auth, host, 'content-type': 'application/json; charset=utf-8' }, '{"reason":"x"}');
    expect(json.status).toBe(404);
    expect((await call(unix, 'GET', '/v1/engines', { ...auth, host: 'localhost' })).status).toBe(200);
    expect((await call(unix, 'GET', '/v1/engines', { ...auth, host: 'attacker.example' })).status).toBe(421);
  });

  it('answers a body over 16 KB with 413 (not a reset connection), and stops reading one far over it', async () => {
    const headers = { ...auth, host, 'content-type': 'application/json' };
    const big = JSON.stringify({ reason: 'x'.repeat(64 * 1024) });
    const res = await call(tcp, 'POST', '/v1/engines/ghost/disable', headers, big);
    expect(res.status).toBe(413);
    expect(res.body).toContain('too large');
    const far = await call(tcp, 'POST', '/v1/engines/ghost/disable', headers, 'x'.repeat(4 * 1024 * 1024)).then((r) => r.status, () => 'closed');
    expect([413, 'closed']).toContain(far);
    // The server goes on.
    expect((await call(tcp, 'GET', '/v1/engines', { ...auth, host })).status).toBe(200);
  });

  it('still serves the CLI, with and without a body', async () => {
    process.env.ICHIDAN_ADMIN_TOKEN = TOKEN;
    try {
      expect((await adminRequest(join(t.dataDir, 'admin.sock'), 'POST', '/v1/engines/ghost/enable')).status).toBe(404);
      expect((await adminRequest(join(t.dataDir, 'admin.sock'), 'POST', '/v1/engines/ghost/disable', { reason: 'x' })).status).toBe(404);
      expect((await adminRequest(join(t.dataDir, 'admin.sock'), 'GET', '/v1/engines')).status).toBe(200);
    } finally {
      delete process.env.ICHIDAN_ADMIN_TOKEN;
    }
  });

  it('refuses a TCP port without a token as a config error naming admin.token', () => {
    expect(() => parseConfig({ admin: { port: 8025 } }, 'test')).toThrow(/admin\.token/);
  });
});
