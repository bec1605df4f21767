/*
 * The tenants' suppression lists shared by two nodes through a real redis-server: a hard bounce
 * one node's delivery got suppresses the recipient for its tenant on the other node too (refused
 * at RCPT there), an operator's removal on the other node lifts it on the first, and another
 * tenant is never touched.
 */
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { adminRequest, baseConfig, startApp, waitUntil, type TestApp } from './helpers/app.js';
import { RawSmtp } from './helpers/raw-smtp.js';
import { redisSupport, startRedis, type TestRedis } from './helpers/redis.js';
import { startSink, type Sink } from './helpers/sink.js';

const support = redisSupport();

describe.skipIf(!support.ok)('suppression shared by the nodes of a cluster (real Redis)', () => {
  let redis: TestRedis;
  let remote: Sink;
  const nodes: TestApp[] = [];

  beforeAll(async () => {
    redis = await startRedis();
    remote = await startSink({ host: '127.0.0.3', rcpt: (a) => (a.toLowerCase().startsWith('hard') ? { code: 550, text: '5.1.1 no such user here' } : undefined) });
    for (const node of ['n1', 'n2']) {
      nodes.push(await startApp((dir) => baseConfig(dir, {
        queue: { retryInitial: '150ms', retryMax: '300ms', retryJitter: 0 },
        tenants: { shop: { networks: ['127.0.0.1/32'] }, news: { networks: ['127.0.0.5/32'] } },
        routes: { 'remote.test': { host: '127.0.0.3', port: remote.port } },
        cluster: { redis: redis.url, node, heartbeat: '200ms', leaseTtl: '1s' },
      })));
    }
    // Both nodes follow the shared state once an entry added on one is in force on the other.
    await api(0, 'POST', '/v1/suppression/add', { tenant: 'news', address: 'warm@up.test' });
    await waitUntil(async () => (await entries(1, 'news')).some((e) => e.address === 'warm@up.test'), 15_000, 'the warm-up entry on n2');
  });
  afterAll(async () => {
    for (const n of nodes) await n.stop();
    await remote?.close();
    await redis?.stop();
  });

  const api = (i: number, method: string, url: string, body?: unknown) => adminRequest(join(nodes[i].dataDir, 'admin.sock'), method, url, body);
  const entries = async (i: number, tenant: string) => (await api(i, 'GET', `/v1/suppression?tenant=${tenant}`)).body.entries as Array<{ address: string; class: string; source: string }>;

  async function rcpt(i: number, client: string, to: string): Promise<string> {
    const c = await RawSmtp.open(nodes[i].port('mx'), '127.0.0.1', client);
    try {
      await c.reply();
      await c.command('EHLO client.test');
      await c.command('MAIL FROM:<me@sender.test>');
      return await c.command(`RCPT TO:<${to}>`);
    } finally {
      c.socket.destroy();
    }
  }

  it('a hard bounce on one node suppresses the recipient for its tenant on the other; a removal on the other lifts it on the first', async () => {
    const c = await RawSmtp.atData(nodes[0].port('mx'), 'me@sender.test', ['Hard@remote.test NOTIFY=NEVER']);
    await c.finishData('Subject: x\r\n\r\nbody\r\n');
    c.socket.destroy();
    await waitUntil(async () => (await entries(1, 'shop')).some((e) => e.address === 'hard@remote.test'), 5000, 'the bounce\'s entry on n2');
    expect((await entries(1, 'shop'))[0]).toMatchObject({ class: 'bad-mailbox', source: 'bounce' });
    expect(await rcpt(1, '127.0.0.1', 'hard@remote.test')).toMatch(/^550 5\.1\.1 <hard@remote\.test>: recipient suppressed after a hard bounce on /);
    // Never another tenant's.
    expect(await rcpt(1, '127.0.0.5', 'hard@remote.test')).toMatch(/^250/);

    expect((await api(1, 'POST', '/v1/suppression/remove', { tenant: 'shop', address: 'hard@remote.test' })).status).toBe(200);
    await waitUntil(async () => (await entries(0, 'shop')).length === 0, 5000, 'the removal on n1');
    expect(await rcpt(0, '127.0.0.1', 'hard@remote.test')).toMatch(/^250/);
  });
});
