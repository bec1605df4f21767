// The transparent proxy on loopback relays live: several transactions per connection, the null
// sender, many recipients, the destination's own replies passed back as given, pipelining, STARTTLS
// offered to the client, ESMTP parameters encoded again as xtext (RFC 3461).
import nodemailer from 'nodemailer';
import { afterEach, describe, expect, it } from 'vitest';
import { xtext } from '../mta/proxy/proxy-listener.js';
import { cleanup, proxy, runCleanup, sink, swaks, to } from './helpers/proxy-app.js';

afterEach(runCleanup);

describe('transparent proxy (loopback): relaying', () => {
  it('encodes ESMTP parameter values again as xtext (RFC 3461) when it passes them on', () => {
    expect(xtext('rfc822;john+news@example.com')).toBe('rfc822;john+2Bnews@example.com');
    expect(xtext('a b=c')).toBe('a+20b+3Dc');
    expect(xtext('QWE123')).toBe('QWE123');
  });

  it('relays transactions live: several per connection, the null sender, many recipients, the destination\'s own replies', async () => {
    const mx = await sink({ host: '127.0.0.51', rcpt: (a) => (a.startsWith('nobody@') ? { code: 550, text: '5.1.1 no such user here' } : undefined) });
    const t = await proxy(() => to(mx));
    const transport = nodemailer.createTransport({ host: '127.0.0.1', port: t.port('proxy'), ignoreTLS: true, pool: true, maxConnections: 1, maxMessages: 10 } as never);
    cleanup.push(async () => transport.close());
    const rcpts = Array.from({ length: 30 }, (_, i) => `user${i}@dest.test`);
    const first = await transport.sendMail({ from: 'a@legacy.test', to: [...rcpts, 'nobody@dest.test'], subject: 'many', text: '.leading dot\r\nbody\r\n' });
    expect(first.rejected).toEqual(['nobody@dest.test']);
    expect(first.rejectedErrors?.[0]?.response).toBe('550 5.1.1 no such user here');
    expect(first.response).toBe('250 2.6.0 Ok: sunk');
    await transport.sendMail({ envelope: { from: '', to: 'bounce@dest.test' }, raw: 'Subject: dsn\r\n\r\nnull sender\r\n' });
    await transport.sendMail({ from: 'c@legacy.test', to: 'third@dest.test', text: 'three' });
    await mx.waitFor(3);
    expect(mx.messages.map((m) => m.mailFrom)).toEqual(['a@legacy.test', '', 'c@legacy.test']);
    expect(mx.messages[0].rcptTo).toEqual(rcpts);
    expect(mx.messages[0].data.toString()).toContain('\r\n.leading dot\r\n');
    // one destination connection carried the client's three transactions
    expect(new Set(mx.messages.map((m) => m.connection)).size).toBe(1);
  });

  it('passes a refused sender and a refused message back as the destination gave them; a pipelined transaction then goes through; one destination session serves the three clients in turn', async () => {
    const mx = await sink({ host: '127.0.0.52', mail: (_ip, n) => (n === 1 ? { code: 553, text: '5.7.1 sender not welcome' } : undefined), data: (n) => (n === 1 ? { code: 554, text: '5.7.0 content refused' } : undefined) });
    const t = await proxy(() => to(mx));
    const out = await swaks(t.port('proxy'), ['--from', 'bad@legacy.test', '--to', 'x@dest.test']);
    expect(out).toMatch(/<\*\* 553 5\.7\.1 sender not welcome/);
    const second = await swaks(t.port('proxy'), ['--from', 'good@legacy.test', '--to', 'x@dest.test']);
    expect(second).toMatch(/<\*\* 554 5\.7\.0 content refused/);
    const third = await swaks(t.port('proxy'), ['--from', 'good@legacy.test', '--to', 'x@dest.test', '--pipeline']);
    expect(third).toMatch(/<-  250 2\.6\.0 Ok: sunk/);
    expect(mx.messages).toHaveLength(1);
    // the three client connections were carried by one destination session, kept between them
    expect(mx.connections).toBe(1);
  });

  it('offers STARTTLS to the client when the listener says so', async () => {
    const mx = await sink({ host: '127.0.0.50' });
    const t = await proxy(() => to(mx), () => ({ listeners: [{ name: 'proxy', role: 'proxy', port: 0, tls: 'starttls' }] }));
    const out = await swaks(t.port('proxy'), ['--tls', '--from', 'a@legacy.test', '--to', 'x@dest.test']);
    expect(out).toMatch(/<-  220 .*TLS/i);
    expect(out).toMatch(/<~  250 2\.6\.0 Ok: sunk/);
    await mx.waitFor(1);
  });
});
