// The transparent proxy admits each transaction as a delivery: a tenant held meanwhile gets 451 4.7.1
// in an open session, and a site's connection limit holds with three source MSAs at once, each
// session waiting its turn.
import { join } from 'node:path';
import nodemailer from 'nodemailer';
import { afterEach, describe, expect, it } from 'vitest';
import { adminRequest, waitUntil } from './helpers/app.js';
import { startDns } from './helpers/dns-server.js';
import { cleanup, proxy, runCleanup, sink, to } from './helpers/proxy-app.js';

afterEach(runCleanup);

describe('transparent proxy (loopback): admission', () => {
  it('admits each further transaction of an open session as a delivery: a tenant held meanwhile gets 451 4.7.1', async () => {
    const mx = await sink({ host: '127.0.0.47' });
    const t = await proxy(() => to(mx), () => ({ tenants: { legacy: { networks: ['127.0.0.1/32'] } } }));
    const transport = nodemailer.createTransport({ host: '127.0.0.1', port: t.port('proxy'), ignoreTLS: true, pool: true, maxConnections: 1 } as never);
    cleanup.push(async () => transport.close());
    await transport.sendMail({ from: 'a@legacy.test', to: 'x@dest.test', text: 'first' });
    expect((await adminRequest(join(t.dataDir, 'admin.sock'), 'POST', '/v1/queue/hold', { tenant: 'legacy' })).status).toBe(200);
    const second = await transport.sendMail({ from: 'a@legacy.test', to: 'x@dest.test', text: 'second' }).catch((e: { response: string }) => e);
    expect((second as { response: string }).response).toMatch(/^451 4\.7\.1 held or suspended at addr:127\.0\.0\.47:\d+; try again later/);
    expect(mx.messages).toHaveLength(1);
  });

  it('keeps the destination site within its connection limit with three source MSAs at once, every session waiting its turn', async () => {
    const mx = await sink({ host: '127.0.0.56', replyDelay: 100 });
    const d = await startDns({ 'dest.test': { mx: [{ exchange: 'mx.dest.test', priority: 10 }] }, 'mx.dest.test': { a: ['127.0.0.56'] } });
    cleanup.push(() => d.close());
    const t = await proxy(() => to(mx), () => ({
      trustedNetworks: ['127.0.0.0/8'],
      dns: { servers: [d.server] },
      delivery: { mxPort: mx.port, mtaSts: { enabled: false }, sites: { dest: { domains: ['dest.test'], maxConnections: 2, initialConnections: 2 } } },
      proxy: { slotWait: '20s' },
    }));
    const msas = ['127.0.0.61', '127.0.0.62', '127.0.0.63'];
    await Promise.all(msas.flatMap((ip) => [1, 2].map(async (n) => {
      const tr = nodemailer.createTransport({ host: '127.0.0.1', port: t.port('proxy'), ignoreTLS: true, localAddress: ip } as never);
      await tr.sendMail({ from: `msa${n}@${ip}.test`, to: `r${n}@dest.test`, text: 'capped' });
      tr.close();
    })));
    await mx.waitFor(6);
    expect(mx.peakConnections).toBeLessThanOrEqual(2);
    expect(mx.refused).toBe(0);
    const status = await waitUntil(() => t.app.queue.scheduler.active === 0, 5_000, 'the slots to be given back').then(() => true);
    expect(status).toBe(true);
  });
});
