// Retries, partial failures, bounces (RFC 3464) and delay notices on one Ichidan, against a sink
// scripted by recipient (helpers/scripted-rcpt.ts) and the sender's own mailbox for the notices.
import { simpleParser } from 'mailparser';
import nodemailer from 'nodemailer';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { RawSmtp } from './helpers/raw-smtp.js';
import { baseConfig, startApp, waitUntil, type TestApp } from './helpers/app.js';
import { scripted } from './helpers/scripted-rcpt.js';
import { startSink, type Sink } from './helpers/sink.js';

describe('retries and bounces', () => {
  let t: TestApp;
  let remote: Sink;
  let senderBox: Sink;

  beforeAll(async () => {
    remote = await startSink({ host: '127.0.0.3', rcpt: scripted });
    senderBox = await startSink({ host: '127.0.0.2' });
    t = await startApp((dir) => baseConfig(dir, {
      trustedNetworks: ['127.0.0.1/32'],
      queue: { retryInitial: '150ms', retryMax: '300ms', retryJitter: 0, maxAge: '1h', delayWarning: '400ms' },
      routes: { 'sender.test': { host: '127.0.0.2', port: senderBox.port }, 'remote.test': { host: '127.0.0.3', port: remote.port } },
    }));
  });
  afterAll(async () => {
    await t?.stop();
    await remote?.close();
    await senderBox?.close();
  });

  const mailer = () => nodemailer.createTransport({ host: '127.0.0.1', port: t.port('mx'), ignoreTLS: true });
  const dsnsFor = (address: string) => senderBox.messages.filter((m) => m.data.toString().includes(`Final-Recipient: rfc822; ${address}`));

  it('retries a 4xx and delivers on the next attempt', async () => {
    const info = await mailer().sendMail({ from: 'me@sender.test', to: 'soft-1@remote.test', text: 'retry me' });
    const qid = info.response.split(' ').pop()!;
    await waitUntil(() => remote.messages.some((m) => m.rcptTo.includes('soft-1@remote.test')), 10_000, 'delivery after retry');
    await waitUntil(() => t.logs.some((l) => l.qid === qid && l.verdict === 'delivered'));
    const attempts = t.logs.filter((l) => l.qid === qid && l.msg === 'delivery attempt').map((l) => l.verdict);
    expect(attempts).toEqual(['deferred', 'delivered']);
    expect(remote.rcptAttempts.get('soft-1@remote.test')).toBe(2);
  });

  it('retries only the recipients that failed', async () => {
    const before = remote.messages.length;
    await mailer().sendMail({ from: 'me@sender.test', to: ['ok-a@remote.test', 'soft-2@remote.test'], text: 'partial' });
    await waitUntil(() => remote.messages.length >= before + 2, 10_000, 'both deliveries');
    const got = remote.messages.slice(before);
    expect(got[0].rcptTo).toEqual(['ok-a@remote.test']);
    expect(got[1].rcptTo).toEqual(['soft-2@remote.test']);
    expect(remote.rcptAttempts.get('ok-a@remote.test')).toBe(1);
  });

  it('bounces a 5xx with an RFC 3464 report holding the original message', async () => {
    await mailer().sendMail({ from: 'me@sender.test', to: 'hard@remote.test', subject: 'doomed', text: 'the original body', dsn: { envid: 'E-1', notify: ['FAILURE'], orcpt: 'rfc822;hard@remote.test' } });
    await waitUntil(() => dsnsFor('hard@remote.test').length === 1, 10_000, 'the bounce');
    const dsn = dsnsFor('hard@remote.test')[0];
    expect(dsn.mailFrom).toBe('');
    expect(dsn.rcptTo).toEqual(['me@sender.test']);
    const parsed = await simpleParser(dsn.data);
    expect(parsed.headers.get('content-type')).toMatchObject({ value: 'multipart/report', params: { 'report-type': 'delivery-status' } });
    expect(parsed.headers.get('auto-submitted')).toBe('auto-replied');
    const text = dsn.data.toString();
    expect(text).toContain('Original-Envelope-Id: E-1');
    expect(text).toContain('Original-Recipient: rfc822;hard@remote.test');
    expect(text).toMatch(/Action: failed\r\nStatus: 5\.1\.1\r\n/);
    expect(text).toMatch(/Diagnostic-Code: smtp; 550 5\.1\.1 no such user here/);
    expect(text).toContain('Content-Type: message/rfc822');
    expect(text).toContain('the original body');
  });

  it('returns headers only for RET=HDRS, and sends nothing for NOTIFY=NEVER', async () => {
    await mailer().sendMail({ from: 'me@sender.test', to: 'hard-hdrs@remote.test', text: 'secret body', dsn: { ret: 'HDRS', notify: ['FAILURE'] } });
    await mailer().sendMail({ from: 'me@sender.test', to: 'hard-never@remote.test', text: 'quiet', dsn: { notify: ['NEVER'] } });
    await waitUntil(() => dsnsFor('hard-hdrs@remote.test').length === 1, 10_000, 'the HDRS bounce');
    const text = dsnsFor('hard-hdrs@remote.test')[0].data.toString();
    expect(text).toContain('Content-Type: text/rfc822-headers');
    expect(text).not.toContain('secret body');
    await waitUntil(() => t.logs.some((l) => l.rcpt === 'hard-never@remote.test' && l.verdict === 'bounced'));
    await new Promise((r) => setTimeout(r, 300));
    expect(dsnsFor('hard-never@remote.test')).toHaveLength(0);
  });

  it('never bounces mail from the null sender', async () => {
    const c = await RawSmtp.atData(t.port('mx'), '', ['hard-null@remote.test']);
    const qid = await c.finishData('Subject: a bounce of someone else\r\n\r\nx\r\n');
    await c.command('QUIT');
    await waitUntil(() => t.logs.some((l) => l.qid === qid && l.verdict === 'bounced'));
    await waitUntil(() => t.app.queue.store.message(qid) === undefined, 5_000, 'the message to be swept');
    expect(t.app.queue.store.allMessages().filter((m) => m.state === 'active')).toEqual([]);
  });

  it('sends one delay notice while still retrying', async () => {
    await mailer().sendMail({ from: 'me@sender.test', to: 'always-soft@remote.test', text: 'slow' });
    await waitUntil(() => dsnsFor('always-soft@remote.test').length === 1, 10_000, 'the delay notice');
    const text = dsnsFor('always-soft@remote.test')[0].data.toString();
    expect(text).toMatch(/Action: delayed\r\nStatus: 4\.3\.2\r\n/);
    expect(text).toContain('Will-Retry-Until: ');
    await new Promise((r) => setTimeout(r, 800));
    expect(dsnsFor('always-soft@remote.test')).toHaveLength(1);
  });
});
