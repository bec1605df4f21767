// Mail in through real SMTP clients (nodemailer, swaks), out to real sink servers on 127.0.0.x.
// The Ichidan and the sinks are shared, but each test sends the mail it checks and reads only what
// arrived after it started, so any one of them passes alone (vitest -t).
import { execFile } from 'node:child_process';
import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import nodemailer from 'nodemailer';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { baseConfig, startApp, TEST_HASH, TEST_PASSWORD, waitUntil, type TestApp } from './helpers/app.js';
import { startSink, type Sink } from './helpers/sink.js';

const exec = promisify(execFile);
async function run(cmd: string, args: string[]): Promise<{ stdout: string }> {
  try {
    return await exec(cmd, args);
  } catch (err) {
    const e = err as { stdout?: string; stderr?: string; message: string };
    throw new Error(`${e.message}\n${e.stdout ?? ''}\n${e.stderr ?? ''}`);
  }
}

describe('relay through real clients and sinks', () => {
  let t: TestApp;
  let mailboxA: Sink; // tenant alpha's mailbox server
  let mailboxB: Sink; // tenant beta's mailbox server
  let internet: Sink; // "everything else"
  let lmtpBox: Sink; // tenant gamma's mailbox server speaks LMTP

  beforeAll(async () => {
    mailboxA = await startSink({ host: '127.0.0.2' });
    mailboxB = await startSink({ host: '127.0.0.3' });
    internet = await startSink({ host: '127.0.0.4' });
    lmtpBox = await startSink({ host: '127.0.0.5', lmtp: true, rcpt: (a) => (a.startsWith('gone@') ? { code: 550, text: '5.1.1 no such mailbox' } : undefined) });
    t = await startApp((dir) => baseConfig(dir, {
      tenants: {
        alpha: { domains: ['alpha.test'] },
        beta: { domains: ['beta.test'], networks: ['127.0.0.9/32'] },
        gamma: { domains: ['gamma.test'] },
      },
      users: [{ name: 'ann@alpha.test', password: TEST_HASH, tenant: 'alpha' }],
      routes: {
        'alpha.test': { host: '127.0.0.2', port: mailboxA.port },
        'beta.test': { host: '127.0.0.3', port: mailboxB.port },
        'gamma.test': { host: '127.0.0.5', port: lmtpBox.port, protocol: 'lmtp' },
        '*': { host: '127.0.0.4', port: internet.port },
      },
    }));
  });
  afterAll(async () => {
    await t?.stop();
    await Promise.all([mailboxA, mailboxB, internet, lmtpBox].map((s) => s?.close()));
  });

  it('delivers inbound MX mail to the hosted domain, body byte for byte, Received in front', async () => {
    const raw = 'From: <x@remote.test>\r\nTo: <ann@alpha.test>\r\nSubject: hello\r\nMessage-ID: <m1@remote.test>\r\n\r\nline one\r\n.leading dot\r\n\u00e9t\u00e9 8bit\r\n';
    const before = mailboxA.messages.length;
    const tx = nodemailer.createTransport({ host: '127.0.0.1', port: t.port('mx'), secure: false, ignoreTLS: true });
    const info = await tx.sendMail({ envelope: { from: 'x@remote.test', to: ['ann@alpha.test'] }, raw });
    expect(info.response).toMatch(/^250 2\.0\.0 Ok: queued as [0-9A-Z]{16}$/);
    const qid = info.response.split(' ').pop()!;
    const m = (await mailboxA.waitFor(before + 1))[before];
    const text = m.data.toString('utf8');
    expect(text.startsWith('Received: from ')).toBe(true);
    expect(text).toContain(`by mx.ichidan.test (Ichidan) with ESMTP id ${qid}`);
    expect(text.slice(text.indexOf('From: <x@remote.test>'))).toBe(raw);
    expect(m.rcptTo).toEqual(['ann@alpha.test']);
    expect(m.mailFrom).toBe('x@remote.test');
    // The sink offers STARTTLS and delivery takes it (opportunistic TLS).
    expect(m.secure).toBe(true);
  });

  it('delivers over LMTP with an outcome per recipient', async () => {
    const before = lmtpBox.messages.length;
    const info = await nodemailer.createTransport({ host: '127.0.0.1', port: t.port('mx'), ignoreTLS: true })
      .sendMail({ from: 'x@remote.test', to: ['one@gamma.test', 'gone@gamma.test'], text: 'lmtp', dsn: { notify: ['NEVER'] } });
    const qid = info.response.split(' ').pop()!;
    const m = (await lmtpBox.waitFor(before + 1))[before];
    expect(m.rcptTo).toEqual(['one@gamma.test']);
    await waitUntil(() => t.logs.filter((l) => l.qid === qid && l.msg === 'delivery attempt').length === 2, 10_000, 'both outcomes');
    const byRcpt = Object.fromEntries(t.logs.filter((l) => l.qid === qid && l.msg === 'delivery attempt').map((l) => [l.rcpt, [l.verdict, l.status]]));
    expect(byRcpt).toEqual({ 'one@gamma.test': ['delivered', '2.0.0'], 'gone@gamma.test': ['bounced', '5.1.1'] });
  });

  it('relays for an authenticated user after STARTTLS, and refuses a wrong password', async () => {
    const before = internet.messages.length;
    const ok = nodemailer.createTransport({ host: '127.0.0.1', port: t.port('submission'), secure: false, requireTLS: true, tls: { rejectUnauthorized: false }, auth: { user: 'ann@alpha.test', pass: TEST_PASSWORD } });
    const info = await ok.sendMail({ from: 'ann@alpha.test', to: 'someone@elsewhere.test', subject: 'out', text: 'outbound' });
    expect(info.response).toMatch(/^250 2\.0\.0 Ok: queued as /);
    const m = (await internet.waitFor(before + 1))[before];
    expect(m.rcptTo).toEqual(['someone@elsewhere.test']);
    expect(m.data.toString()).toMatch(/with ESMTPSA id /);
    const bad = nodemailer.createTransport({ host: '127.0.0.1', port: t.port('submission'), secure: false, requireTLS: true, tls: { rejectUnauthorized: false }, auth: { user: 'ann@alpha.test', pass: 'wrong' } });
    await expect(bad.sendMail({ from: 'ann@alpha.test', to: 'someone@elsewhere.test', text: 'x' })).rejects.toThrow(/535 5\.7\.8/);
  });

  it('splits a message for two tenants into two lanes without copying it', async () => {
    const before = { a: mailboxA.messages.length, b: mailboxB.messages.length };
    const tx = nodemailer.createTransport({ host: '127.0.0.1', port: t.port('mx'), secure: false, ignoreTLS: true });
    const info = await tx.sendMail({ from: 'x@remote.test', to: ['ann@alpha.test', 'bo@beta.test'], subject: 'both', text: 'shared body' });
    const qid = info.response.split(' ').pop()!;
    await mailboxA.waitFor(before.a + 1);
    await mailboxB.waitFor(before.b + 1);
    expect(mailboxA.messages.at(-1)!.rcptTo).toEqual(['ann@alpha.test']);
    expect(mailboxB.messages.at(-1)!.rcptTo).toEqual(['bo@beta.test']);
    await waitUntil(() => t.logs.filter((l) => l.qid === qid && l.msg === 'delivery attempt').length === 2, 10_000, 'both attempts logged');
    const attempts = t.logs.filter((l) => l.qid === qid && l.msg === 'delivery attempt');
    expect(attempts.map((l) => l.tenant).sort()).toEqual(['alpha', 'beta']);
  });

  it('resolves the tenant from the client network for a trusted MSA', async () => {
    // 127.0.0.9 belongs to tenant beta: it may relay without AUTH, and its mail is beta's.
    const tx = nodemailer.createTransport({ host: '127.0.0.1', port: t.port('mx'), secure: false, ignoreTLS: true, localAddress: '127.0.0.9' } as never);
    const info = await tx.sendMail({ from: 'app@beta.test', to: 'far@away.test', text: 'from the MSA' });
    const qid = info.response.split(' ').pop()!;
    await waitUntil(() => t.logs.some((l) => l.qid === qid && l.verdict === 'delivered'), 10_000, 'delivery');
    expect(t.logs.find((l) => l.qid === qid && l.msg === 'delivery attempt')!.tenant).toBe('beta');
  });

  it('takes mail from swaks: plain, STARTTLS with a verified certificate, and AUTH', async () => {
    const before = mailboxA.messages.length;
    const plain = await run('swaks', ['--server', '127.0.0.1', '--port', String(t.port('mx')), '--from', 'sw@remote.test', '--to', 'ann@alpha.test', '--body', 'plain swaks']);
    expect(plain.stdout).toMatch(/<- {2}250 2\.0\.0 Ok: queued as/);
    const cert = join(t.dataDir, 'tls', 'self-signed.crt');
    const tls = await run('swaks', ['--server', '127.0.0.1', '--port', String(t.port('mx')), '--tls', '--tls-verify', '--tls-ca-path', cert, '--tls-sni', 'mx.ichidan.test',
      '--from', 'sw@remote.test', '--to', 'ann@alpha.test', '--body', 'tls swaks']);
    expect(tls.stdout).toMatch(/TLS started with cipher/);
    expect(tls.stdout).toMatch(/250 2\.0\.0 Ok: queued as/);
    const auth = await run('swaks', ['--server', '127.0.0.1', '--port', String(t.port('submission')), '--tls', '--auth', 'LOGIN', '--auth-user', 'ann@alpha.test', '--auth-password', TEST_PASSWORD,
      '--from', 'ann@alpha.test', '--to', 'ann@alpha.test', '--body', 'auth swaks']);
    expect(auth.stdout).toMatch(/235 2\.7\.0/);
    expect(auth.stdout).toMatch(/250 2\.0\.0 Ok: queued as/);
    const got = await mailboxA.waitFor(before + 3);
    const bodies = got.slice(before).map((m) => m.data.toString());
    expect(bodies.some((b) => b.includes('plain swaks'))).toBe(true);
    expect(bodies.some((b) => b.includes('tls swaks') && /with ESMTPS id/.test(b))).toBe(true);
    expect(bodies.some((b) => b.includes('auth swaks') && /with ESMTPSA id/.test(b))).toBe(true);
  });

  it('offers AUTH at once on an implicit-TLS listener', async () => {
    const tls = await startApp((dir) => baseConfig(dir, {
      listeners: [{ name: 'smtps', role: 'submission', port: 0, tls: 'implicit' }],
      tenants: { alpha: { domains: ['alpha.test'] } },
      users: [{ name: 'ann@alpha.test', password: TEST_HASH, tenant: 'alpha' }],
      routes: { '*': { host: '127.0.0.4', port: internet.port } },
    }));
    try {
      const before = internet.messages.length;
      const info = await nodemailer.createTransport({ host: '127.0.0.1', port: tls.port('smtps'), secure: true, tls: { rejectUnauthorized: false }, auth: { user: 'ann@alpha.test', pass: TEST_PASSWORD } })
        .sendMail({ from: 'ann@alpha.test', to: 'far@elsewhere.test', text: 'over implicit TLS' });
      expect(info.response).toMatch(/^250 2\.0\.0 /);
      const got = await internet.waitFor(before + 1);
      expect(got.at(-1)!.data.toString()).toMatch(/with ESMTPSA id /);
    } finally {
      await tls.stop();
    }
  });

  it('removes spool files and records once everything is delivered', async () => {
    const info = await nodemailer.createTransport({ host: '127.0.0.1', port: t.port('mx'), ignoreTLS: true })
      .sendMail({ from: 'x@remote.test', to: ['ann@alpha.test', 'bo@beta.test'], text: 'to be cleaned up' });
    const qid = info.response.split(' ').pop()!;
    await waitUntil(() => t.logs.filter((l) => l.qid === qid && l.verdict === 'delivered').length === 2, 10_000, 'both deliveries');
    await waitUntil(async () => (await readdir(join(t.dataDir, 'spool'))).filter((f) => f !== 'corrupt').length === 0, 10_000, 'spool to empty');
    // The rows go in the sweep's next commit after the files (an unsynced one: up to 10 ms later).
    await waitUntil(() => t.app.queue.store.allMessages().length === 0, 2_000, 'records to be removed');
    expect(t.app.queue.store.allMessages()).toEqual([]);
  });
});
