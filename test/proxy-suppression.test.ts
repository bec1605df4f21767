// The transparent proxy and the tenants' suppression lists: a legacy MTA of a tenant's network
// relaying through the proxy gets 550 5.1.1 naming the suppression at RCPT for a recipient its
// tenant has suppressed — whatever the tenant's action, as a live relay bounces nothing later — and
// the destination is never asked; another tenant's client and other recipients go through.
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { adminRequest } from './helpers/app.js';
import { proxy, runCleanup, sink, to } from './helpers/proxy-app.js';
import { RawSmtp } from './helpers/raw-smtp.js';

afterEach(runCleanup);

describe('transparent proxy (loopback): suppressed recipients', () => {
  it('refuses a suppressed recipient of the client\'s tenant at RCPT and relays the rest', async () => {
    const mx = await sink({ host: '127.0.0.47' });
    const t = await proxy(() => to(mx), () => ({
      trustedNetworks: [],
      tenants: { shop: { networks: ['127.0.0.1/32'], suppression: { action: 'bounce' } }, news: { networks: ['127.0.0.6/32'] } },
    }));
    const added = await adminRequest(join(t.dataDir, 'admin.sock'), 'POST', '/v1/suppression/add', { tenant: 'shop', address: 'gone@dest.test' });
    expect(added.status).toBe(200);

    const c = await RawSmtp.open(t.port('proxy'), '127.0.0.1');
    await c.reply();
    await c.command('EHLO legacy.test');
    expect(await c.command('MAIL FROM:<a@legacy.test>')).toMatch(/^250/);
    expect(await c.command('RCPT TO:<Gone@dest.test>')).toMatch(/^550 5\.1\.1 <Gone@dest\.test>: recipient suppressed by an operator on \d{4}-\d\d-\d\d \(bad-mailbox\)/);
    expect(await c.command('RCPT TO:<ok@dest.test>')).toMatch(/^250/);
    expect(await c.command('DATA')).toMatch(/^354/);
    expect(await c.command('Subject: x\r\n\r\nbody\r\n.')).toMatch(/^250/);
    c.socket.destroy();
    await mx.waitFor(1);
    expect(mx.messages[0].rcptTo).toEqual(['ok@dest.test']);
    expect(mx.rcptAttempts.has('Gone@dest.test')).toBe(false);

    // Another tenant's client: not its suppression.
    const d = await RawSmtp.open(t.port('proxy'), '127.0.0.1', '127.0.0.6');
    await d.reply();
    await d.command('EHLO legacy.test');
    await d.command('MAIL FROM:<a@legacy.test>');
    expect(await d.command('RCPT TO:<gone@dest.test>')).toMatch(/^250/);
    d.socket.destroy();
  });
});
