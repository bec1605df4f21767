// Next-hop resolution through a DNS server of the test's own on loopback: MX order, fallback, null MX, NXDOMAIN.
import nodemailer from 'nodemailer';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { baseConfig, startApp, waitUntil, type TestApp } from './helpers/app.js';
import { startDns, type TestDns } from './helpers/dns-server.js';
import { startSink, type Sink } from './helpers/sink.js';

describe('routing through MX records', () => {
  let t: TestApp;
  let dns: TestDns;
  let primary: Sink; // 127.0.0.6, preference 5
  let secondary: Sink; // 127.0.0.5, preference 10
  let plainA: Sink; // 127.0.0.7, the address of a domain without MX
  let backup: Sink; // 127.0.0.9, second MX after a dead first one
  let senderBox: Sink; // where bounces for the senders' domain go
  const PORT = 20000 + Math.floor(Math.random() * 20000);

  beforeAll(async () => {
    primary = await startSink({ host: '127.0.0.6', port: PORT });
    secondary = await startSink({ host: '127.0.0.5', port: PORT });
    plainA = await startSink({ host: '127.0.0.7', port: PORT });
    backup = await startSink({ host: '127.0.0.9', port: PORT });
    senderBox = await startSink({ host: '127.0.0.2' });
    dns = await startDns({
      'pref.test': { mx: [{ exchange: 'mx-b.pref.test', priority: 10 }, { exchange: 'mx-a.pref.test', priority: 5 }] },
      'mx-a.pref.test': { a: ['127.0.0.6'] },
      'mx-b.pref.test': { a: ['127.0.0.5'] },
      'no-mx.test': { a: ['127.0.0.7'] },
      'null-mx.test': { mx: [{ exchange: '', priority: 0 }] },
      'dead-first.test': { mx: [{ exchange: 'down.dead-first.test', priority: 10 }, { exchange: 'up.dead-first.test', priority: 20 }] },
      'down.dead-first.test': { a: ['127.0.0.8'] },
      'up.dead-first.test': { a: ['127.0.0.9'] },
      'broken.test': { servfail: true },
    });
    t = await startApp((dir) => baseConfig(dir, {
      dns: { servers: [dns.server], timeout: '1s' },
      trustedNetworks: ['127.0.0.1/32'],
      delivery: { mxPort: PORT, connectTimeout: '2s' },
      routes: { 'sender.test': { host: '127.0.0.2', port: senderBox.port } },
    }));
  });
  afterAll(async () => {
    await t?.stop();
    await dns?.close();
    await Promise.all([primary, secondary, plainA, backup, senderBox].map((s) => s?.close()));
  });

  const send = (to: string) => nodemailer.createTransport({ host: '127.0.0.1', port: t.port('mx'), ignoreTLS: true })
    .sendMail({ from: 'me@sender.test', to, subject: `to ${to}`, text: 'routing' });

  it('delivers to the most preferred MX', async () => {
    await send('a@pref.test');
    await primary.waitFor(1);
    expect(secondary.messages).toHaveLength(0);
    expect(dns.queries.some((q) => q.name === 'pref.test')).toBe(true);
  });

  it('falls back to the address record when there is no MX', async () => {
    await send('a@no-mx.test');
    const [m] = await plainA.waitFor(1);
    expect(m.rcptTo).toEqual(['a@no-mx.test']);
  });

  it('tries the next MX when the first does not answer', async () => {
    await send('a@dead-first.test');
    const [m] = await backup.waitFor(1);
    expect(m.rcptTo).toEqual(['a@dead-first.test']);
  });

  it('bounces at once for a null MX and for a domain that does not exist', async () => {
    await send('a@null-mx.test');
    await send('a@nxdomain.test');
    const dsns = await senderBox.waitFor(2);
    const texts = dsns.map((d) => d.data.toString());
    expect(dsns.every((d) => d.mailFrom === '')).toBe(true);
    expect(texts.find((x) => x.includes('Final-Recipient: rfc822; a@null-mx.test'))).toMatch(/Status: 5\.1\.10/);
    expect(texts.find((x) => x.includes('Final-Recipient: rfc822; a@nxdomain.test'))).toMatch(/Status: 5\.1\.2/);
  });

  it('keeps mail queued while the DNS answers SERVFAIL', async () => {
    const info = await send('a@broken.test');
    const qid = info.response.split(' ').pop()!;
    await waitUntil(() => t.logs.filter((l) => l.qid === qid && l.verdict === 'deferred').length >= 2, 10_000, 'two deferrals');
    const rows = t.app.queue.store.recipientsOf(qid);
    expect(rows[0].state).toBe('queued');
    expect(rows[0].last_status).toBe('4.4.3');
  });
});
