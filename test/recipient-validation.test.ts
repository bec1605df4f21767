// Recipient validation at RCPT against a real mailbox server (Dovecot's LMTP, a private instance):
// an unknown user is refused with 550 5.1.1 before anything is accepted, a known one is taken, the
// answers are cached and shared by concurrent probes, a missing or silent server gives 450/451 by
// config, a listed file is read again when it changes, a catch-all domain takes every local part.
import { createServer, type Server } from 'node:net';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { baseConfig, startApp, waitUntil, type ConfigInput, type TestApp } from './helpers/app.js';
import { dovecotSupport, LMTP_HOST, startDovecot, type TestDovecot } from './helpers/dovecot.js';
import { RawSmtp } from './helpers/raw-smtp.js';
import { scripted } from './helpers/scripted-rcpt.js';
import { probe } from '../mta/ingress/ingress-recipients-verify.js';
import { startSink } from './helpers/sink.js';
import { redisSupport, startRedis } from './helpers/redis.js';

const support = dovecotSupport();
const redisOk = redisSupport();

/** One transaction from an unauthenticated client on the MX listener: the RCPT replies, in order. */
async function rcpts(t: TestApp, to: string[]): Promise<string[]> {
  const c = await RawSmtp.open(t.port('mx'));
  await c.reply();
  expect(await c.command('EHLO client.test')).toMatch(/^250/);
  expect(await c.command('MAIL FROM:<sender@far.test>')).toMatch(/^250/);
  const out: string[] = [];
  for (const r of to) out.push(await c.command(`RCPT TO:<${r}>`));
  await c.command('QUIT').catch(() => undefined);
  c.close();
  return out;
}

async function metric(t: TestApp, name: string, labels: Record<string, string>): Promise<number> {
  const m = (await t.app.metrics.getMetricsAsJSON()).find((x) => x.name === name);
  const v = m?.values.find((x) => Object.entries(labels).every(([k, val]) => x.labels[k] === val));
  return Number(v?.value ?? 0);
}

function app(tenant: Record<string, unknown>, extra: Partial<ConfigInput> = {}): Promise<TestApp> {
  return startApp((dir) => baseConfig(dir, {
    tenants: { mbx: { domains: ['mbx.test', 'open.test'], ...tenant } },
    routes: { 'mbx.test': { hold: true }, 'open.test': { hold: true } },
    ...extra,
  }));
}

describe.skipIf(!support.ok)(`recipient validation with Dovecot LMTP${support.ok ? '' : ` (skipped: ${support.reason})`}`, () => {
  let dovecot: TestDovecot;
  let t: TestApp | undefined;
  beforeAll(async () => { dovecot = await startDovecot({ 'alice@mbx.test': 'x', 'bob@mbx.test': 'y' }); });
  afterAll(async () => { await dovecot?.stop(); });
  afterEach(async () => { await t?.stop(); t = undefined; });

  it('takes a known user, refuses an unknown one with 550 5.1.1, and asks the server once per address while the answer is fresh', async () => {
    t = await app({ recipients: { verify: { host: LMTP_HOST, port: dovecot.lmtp.port, protocol: 'lmtp', positiveTtl: '1h', negativeTtl: '1h' } } });
    const before = dovecot.lmtpConnections();
    const [alice, nobody] = await rcpts(t, ['alice@mbx.test', 'nobody@mbx.test']);
    expect(alice).toMatch(/^250 /);
    expect(nobody).toBe('550 5.1.1 recipient address rejected: user unknown');
    await waitUntil(() => dovecot.lmtpConnections() === before + 2, 5000, 'two probes in Dovecot\'s log');

    // Fresh answers, positive and negative, come from the cache: Dovecot sees no new connection.
    const again = await rcpts(t, ['alice@mbx.test', 'nobody@mbx.test', 'ALICE@mbx.test']);
    expect(again.map((r) => r.slice(0, 3))).toEqual(['250', '550', '250']);
    await new Promise((r) => setTimeout(r, 300));
    expect(dovecot.lmtpConnections()).toBe(before + 2);
    expect(await metric(t, 'ichidan_recipient_probes_total', { answer: 'known' })).toBe(1);
    expect(await metric(t, 'ichidan_recipient_probes_total', { answer: 'unknown' })).toBe(1);
    expect(await metric(t, 'ichidan_recipient_checks_total', { result: 'accepted', by: 'cache' })).toBe(2);
    expect(await metric(t, 'ichidan_recipient_checks_total', { result: 'unknown', by: 'cache' })).toBe(1);
    // The refused recipient never reached the queue.
    expect(t.logs.some((l) => l.msg === 'recipient refused' && l.rcpt === 'nobody@mbx.test')).toBe(true);
  });

  it('a message to a known and an unknown user is queued for the known one only', async () => {
    t = await app({ recipients: { verify: { host: LMTP_HOST, port: dovecot.lmtp.port } } });
    const c = await RawSmtp.open(t.port('mx'));
    await c.reply();
    await c.command('EHLO client.test');
    await c.command('MAIL FROM:<sender@far.test>');
    expect(await c.command('RCPT TO:<bob@mbx.test>')).toMatch(/^250 /);
    expect(await c.command('RCPT TO:<carol@mbx.test>')).toMatch(/^550 5\.1\.1 /);
    expect(await c.command('DATA')).toMatch(/^354/);
    const id = await c.finishData('Subject: hi\r\n\r\nhello\r\n');
    c.close();
    const queued = t.app.queue.store.recipientsOf(id).map((r) => r.address);
    expect(queued).toEqual(['bob@mbx.test']);
  });

  it('concurrent RCPTs for one address share one probe', async () => {
    t = await app({ recipients: { verify: { host: LMTP_HOST, port: dovecot.lmtp.port } } });
    const before = dovecot.lmtpConnections();
    const replies = await Promise.all(Array.from({ length: 8 }, () => rcpts(t!, ['bob@mbx.test'])));
    expect(replies.flat().every((r) => r.startsWith('250 '))).toBe(true);
    await new Promise((r) => setTimeout(r, 300));
    expect(dovecot.lmtpConnections()).toBe(before + 1);
    expect(await metric(t, 'ichidan_recipient_probes_total', { answer: 'known' })).toBe(1);
  });

  it('a probe that cannot be made gives 450 4.1.1, or 451 4.3.0 when so configured, and is not cached', async () => {
    const closed = await new Promise<number>((resolve) => { const s = createServer(); s.listen(0, LMTP_HOST, () => { const p = (s.address() as { port: number }).port; s.close(() => resolve(p)); }); });
    t = await app({
      recipients: {
        verify: { host: LMTP_HOST, port: closed, timeout: '2s' },
        domains: { 'open.test': { verify: { host: LMTP_HOST, port: closed, timeout: '2s' }, unavailable: 'tempfail-451' } },
      },
    });
    const [down, down451] = await rcpts(t, ['alice@mbx.test', 'alice@open.test']);
    expect(down).toBe('450 4.1.1 recipient address rejected: address verification unavailable, try again later');
    expect(down451).toBe('451 4.3.0 recipient address could not be checked now, try again later');
    expect(await metric(t, 'ichidan_recipient_probes_total', { answer: 'unavailable' })).toBe(2);
    await rcpts(t, ['alice@mbx.test']);
    expect(await metric(t, 'ichidan_recipient_probes_total', { answer: 'unavailable' })).toBe(3);
  });

  it('the probe itself: LHLO, MAIL, RCPT, RSET, QUIT; a non-ASCII address to a server without SMTPUTF8 is unavailable, not unknown', async () => {
    const v = { host: LMTP_HOST, port: dovecot.lmtp.port, protocol: 'lmtp' as const, positiveTtl: 1, negativeTtl: 1, timeout: 3000, sender: '', cacheSize: 10 };
    expect(await probe(v, 'alice@mbx.test', 'mx.ichidan.test')).toEqual({ answer: 'known', detail: 'RCPT: 250 2.1.5 OK' });
    expect(await probe(v, 'nobody@mbx.test', 'mx.ichidan.test')).toMatchObject({ answer: 'unknown', detail: expect.stringMatching(/^RCPT: 550 5\.1\.1 /) });
    expect(await probe(v, 'jörg@mbx.test', 'mx.ichidan.test')).toEqual({ answer: 'unavailable', detail: 'the server does not offer SMTPUTF8' });
  });

  it.skipIf(!redisOk.ok)(`two nodes of a cluster share the answers through Redis: one probe serves both${redisOk.ok ? '' : ' (skipped: no redis-server)'}`, async () => {
    const redis = await startRedis();
    let b: TestApp | undefined;
    try {
      const node = (name: string) => app({ recipients: { verify: { host: LMTP_HOST, port: dovecot.lmtp.port } } }, { cluster: { redis: redis.url, node: name } });
      t = await node('a');
      b = await node('b');
      await waitUntil(() => t!.app.cluster!.link.up && b!.app.cluster!.link.up, 5000, 'both nodes on Redis');
      const before = dovecot.lmtpConnections();
      expect((await rcpts(t, ['alice@mbx.test', 'ghost@mbx.test'])).map((r) => r.slice(0, 3))).toEqual(['250', '550']);
      expect((await rcpts(b, ['alice@mbx.test', 'ghost@mbx.test'])).map((r) => r.slice(0, 3))).toEqual(['250', '550']);
      await new Promise((r) => setTimeout(r, 300));
      expect(dovecot.lmtpConnections()).toBe(before + 2);
      expect(await metric(b, 'ichidan_recipient_checks_total', { result: 'accepted', by: 'cluster' })).toBe(1);
      expect(await metric(b, 'ichidan_recipient_checks_total', { result: 'unknown', by: 'cluster' })).toBe(1);
      expect(await metric(b, 'ichidan_recipient_probes_total', { answer: 'known' })).toBe(0);
      // Redis gone: each node probes by itself, nothing is refused for it.
      await redis.kill();
      expect((await rcpts(b, ['bob@mbx.test']))[0]).toMatch(/^250 /);
      expect(await metric(b, 'ichidan_recipient_probes_total', { answer: 'known' })).toBe(1);
    } finally {
      await b?.stop();
      await redis.stop();
    }
  });

  it('a server that never answers is given up after the timeout: 450 4.1.1', async () => {
    const silent: Server = createServer(() => undefined);
    await new Promise<void>((r) => silent.listen(0, LMTP_HOST, () => r()));
    try {
      t = await app({ recipients: { verify: { host: LMTP_HOST, port: (silent.address() as { port: number }).port, timeout: '600ms' } } });
      const start = Date.now();
      const [reply] = await rcpts(t, ['alice@mbx.test']);
      expect(reply).toMatch(/^450 4\.1\.1 /);
      expect(Date.now() - start).toBeLessThan(3000);
    } finally {
      silent.close();
    }
  });
});

describe('recipient lists', () => {
  let t: TestApp | undefined;
  let dir: string;
  beforeAll(async () => { dir = await mkdtemp(join(tmpdir(), 'ichidan-rcpt-')); });
  afterAll(async () => { await rm(dir, { recursive: true, force: true }); });
  afterEach(async () => { await t?.stop(); t = undefined; });

  it('reads the file again when it changes; postmaster is always taken; other users are refused without any probe', async () => {
    const file = join(dir, 'users');
    await writeFile(file, '# mailboxes\nalice@mbx.test\n\n');
    t = await app({ recipients: { file, list: ['carol@mbx.test'] } });
    expect((await rcpts(t, ['alice@mbx.test', 'bob@mbx.test', 'carol@mbx.test', 'postmaster@mbx.test'])).map((r) => r.slice(0, 9)))
      .toEqual(['250 2.1.5', '550 5.1.1', '250 2.1.5', '250 2.1.5']);
    await writeFile(file, 'alice@mbx.test\nbob@mbx.test # new\n');
    await waitUntil(async () => (await rcpts(t!, ['bob@mbx.test']))[0].startsWith('250 '), 5000, 'bob to be taken once the file changed');
    // A broken file keeps the entries last read.
    await writeFile(file, 'alice@mbx.test\nnot an address\n');
    await new Promise((r) => setTimeout(r, 1200));
    expect((await rcpts(t, ['bob@mbx.test']))[0]).toMatch(/^250 /);
    expect(t.logs.some((l) => l.msg === 'recipient file not read again: the entries last read stay in use')).toBe(true);
    expect(await metric(t, 'ichidan_recipient_probes_total', { answer: 'known' })).toBe(0);
  });

  it('probes an SMTP next hop with EHLO, MAIL, RCPT: 250 known, 5xx unknown, 4xx or a refused greeting or MAIL unavailable; a reload keeps the answers', async () => {
    const sink = await startSink({ host: '127.0.0.2', rcpt: scripted });
    const refusing = await startSink({ host: '127.0.0.2', connect: () => ({ code: 554, text: '5.3.2 not now' }) });
    const noMail = await startSink({ host: '127.0.0.2', mail: () => ({ code: 451, text: '4.3.0 not now' }) });
    try {
      const smtp = (port: number) => ({ host: '127.0.0.2', port, protocol: 'smtp', timeout: '3s' });
      t = await app({
        domains: ['mbx.test', 'open.test', 'x.test'],
        recipients: { verify: smtp(sink.port), domains: { 'open.test': { verify: smtp(refusing.port) }, 'x.test': { verify: smtp(noMail.port) } } },
      }, { routes: { 'mbx.test': { hold: true }, 'open.test': { hold: true }, 'x.test': { hold: true } } });
      expect((await rcpts(t, ['someone@mbx.test', 'hard-1@mbx.test', 'always-soft-1@mbx.test', 'a@open.test', 'a@x.test'])).map((r) => r.slice(0, 9)))
        .toEqual(['250 2.1.5', '550 5.1.1', '450 4.1.1', '450 4.1.1', '450 4.1.1']);
      expect(sink.messages).toHaveLength(0);
      const probes = sink.connections;
      expect(t.app.reconfigure(t.app.config)).toBeGreaterThan(1);
      expect((await rcpts(t, ['someone@mbx.test', 'hard-1@mbx.test'])).map((r) => r.slice(0, 3))).toEqual(['250', '550']);
      expect(sink.connections).toBe(probes);
    } finally {
      await Promise.all([sink.close(), refusing.close(), noMail.close()]);
    }
  });

  it('a client that hangs up while its recipient is being checked leaves nothing behind', async () => {
    const slow = await startSink({ host: '127.0.0.2', replyDelay: 500 });
    try {
      t = await app({ recipients: { verify: { host: '127.0.0.2', port: slow.port, protocol: 'smtp', timeout: '5s' } } });
      const c = await RawSmtp.open(t.port('mx'));
      await c.reply();
      await c.command('EHLO client.test');
      await c.command('MAIL FROM:<sender@far.test>');
      c.send('RCPT TO:<gone@mbx.test>\r\n');
      await new Promise((r) => setTimeout(r, 100));
      c.close();
      await waitUntil(async () => await metric(t!, 'ichidan_recipient_probes_total', { answer: 'known' }) === 1, 10_000, 'the probe to end');
      // The answer is kept for the next client, and the process is none the worse.
      expect((await rcpts(t, ['gone@mbx.test']))[0]).toMatch(/^250 /);
      expect(t.logs.filter((l) => Number(l.level) >= 50)).toEqual([]);
    } finally {
      await slow.close();
    }
  });

  it('a catch-all domain takes every local part, and "@domain" in the list does too', async () => {
    t = await app({
      domains: ['mbx.test', 'open.test', 'any.test'],
      recipients: { list: ['alice@mbx.test', '@any.test'], domains: { 'open.test': { catchAll: true } } },
    }, { routes: { 'mbx.test': { hold: true }, 'open.test': { hold: true }, 'any.test': { hold: true } } });
    expect((await rcpts(t, ['whoever@open.test', 'x.y@any.test', 'alice@mbx.test', 'zed@mbx.test'])).map((r) => r.slice(0, 3)))
      .toEqual(['250', '250', '250', '550']);
  });
});
