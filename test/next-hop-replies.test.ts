// What the next hop says after DATA: LMTP answers per recipient (RFC 2033), and a message larger than
// the next hop's SIZE (RFC 1870) bounced without retrying.
import nodemailer from 'nodemailer';
import { describe, expect, it } from 'vitest';
import { baseConfig, startApp, waitUntil } from './helpers/app.js';
import { startSink } from './helpers/sink.js';

describe('what the next hop says after DATA', () => {
  it('takes LMTP answers per recipient: one delivered, one deferred and retried alone', async () => {
    const lmtp = await startSink({ host: '127.0.0.5', lmtp: true, lmtpData: (a, n) => (a.startsWith('full@') && n === 1 ? { code: 452, text: '4.2.2 mailbox full' } : undefined) });
    const t = await startApp((dir) => baseConfig(dir, {
      tenants: { gamma: { domains: ['gamma.test'] } },
      queue: { retryInitial: '100ms', retryJitter: 0 },
      routes: { 'gamma.test': { host: '127.0.0.5', port: lmtp.port, protocol: 'lmtp' } },
    }));
    try {
      const info = await nodemailer.createTransport({ host: '127.0.0.1', port: t.port('mx'), ignoreTLS: true })
        .sendMail({ from: 'x@remote.test', to: ['ok@gamma.test', 'full@gamma.test'], text: 'per recipient' });
      const qid = info.response.split(' ').pop()!;
      const got = await lmtp.waitFor(2);
      expect(got.map((m) => m.rcptTo)).toEqual([['ok@gamma.test'], ['full@gamma.test']]);
      await waitUntil(() => t.logs.filter((l) => l.qid === qid && l.msg === 'delivery attempt').length === 3);
      const attempts = t.logs.filter((l) => l.qid === qid && l.msg === 'delivery attempt').map((l) => `${l.rcpt}:${l.verdict}`);
      expect(attempts).toEqual(['ok@gamma.test:delivered', 'full@gamma.test:deferred', 'full@gamma.test:delivered']);
    } finally {
      await t.stop();
      await lmtp.close();
    }
  });

  it('bounces a message larger than the next hop advertises, without retrying it', async () => {
    const small = await startSink({ host: '127.0.0.3', size: 1000 });
    const senderBox = await startSink({ host: '127.0.0.2' });
    const t = await startApp((dir) => baseConfig(dir, {
      trustedNetworks: ['127.0.0.1/32'],
      routes: { 'sender.test': { host: '127.0.0.2', port: senderBox.port }, 'small.test': { host: '127.0.0.3', port: small.port } },
    }));
    try {
      await nodemailer.createTransport({ host: '127.0.0.1', port: t.port('mx'), ignoreTLS: true })
        .sendMail({ from: 'me@sender.test', to: 'u@small.test', text: 'z'.repeat(5000) });
      const [dsn] = await senderBox.waitFor(1);
      expect(dsn.data.toString()).toMatch(/Action: failed\r\nStatus: 5\.3\.4\r\n/);
      expect(small.messages).toHaveLength(0);
    } finally {
      await t.stop();
      await small.close();
      await senderBox.close();
    }
  });
});
