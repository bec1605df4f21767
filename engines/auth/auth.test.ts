import { generateKeyPairSync } from 'node:crypto';
import { createSocket, type Socket as UdpSocket } from 'node:dgram';
import { promises as dnsPromises } from 'node:dns';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { dkimSign } from 'mailauth';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CONTEXT, message, spooled } from '../../test/helpers/engine-contract.js';
import { startDns, type TestDns } from '../../test/helpers/dns-server.js';
import { spoolMessage, type EngineDeps, type ScanContext } from '../engine.js';
import { createMailauth, mailauthOptions, sampledPolicy } from './auth.js';

const ALLOWED_IP = '192.0.2.10';
const OTHER_IP = '198.51.100.7';
const TXT = 16;

const { privateKey, publicKey } = generateKeyPairSync('rsa', { modulusLength: 1024 });
const publicKeyB64 = publicKey.export({ type: 'spki', format: 'der' }).toString('base64');

function mail(from: string, id: string): string {
  return message({
    From: `Alice <alice@${from}>`, To: 'bob@example.test', Subject: `Report ${id}`,
    Date: 'Wed, 25 Nov 2026 10:00:00 +0000', 'Message-ID': `<${id}@${from}>`, 'MIME-Version': '1.0',
    'Content-Type': 'text/plain; charset=utf-8',
  }, 'The quarterly figures are attached in the usual place.\n');
}

async function signed(text: string, domain: string, selector: string): Promise<string> {
  const pem = privateKey.export({ type: 'pkcs8', format: 'pem' }).toString();
  const { signatures, errors } = await dkimSign(text, {
    signingDomain: domain, selector, privateKey: pem,
    signatureData: [{ signingDomain: domain, selector, privateKey: pem }],
  });
  expect(errors).toEqual([]);
  return signatures + text;
}

function context(sender: string, client: string, extra: Partial<ScanContext> = {}): ScanContext {
  return { ...CONTEXT, sender, client, helo: 'mail.sender.test', ...extra };
}

describe('mailauth engine (SPF, DKIM, DMARC, ARC) against a loopback DNS server', () => {
  let dns: TestDns;
  let dir: string;
  let deps: EngineDeps;

  beforeAll(async () => {
    dns = await startDns({
      'good.test': { txt: [`v=spf1 ip4:${ALLOWED_IP} -all`, 'unrelated verification token'] },
      '_dmarc.good.test': { txt: ['v=DMARC1; p=reject'] },
      'sel._domainkey.good.test': { txt: [`v=DKIM1; k=rsa; p=${publicKeyB64}`] },
      'strict.test': { txt: ['v=spf1 -all'] },
      '_dmarc.strict.test': { txt: ['v=DMARC1; p=reject; rua=mailto:dmarc@strict.test'] },
      'lax.test': { txt: ['v=spf1 -all'] },
      '_dmarc.lax.test': { txt: ['v=DMARC1; p=none'] },
      'sampled.test': { txt: ['v=spf1 -all'] },
      '_dmarc.sampled.test': { txt: ['v=DMARC1; p=reject; pct=0'] },
      'broken.test': { servfail: true },
      '_dmarc.broken.test': { servfail: true },
    });
    const resolver = new dnsPromises.Resolver({ timeout: 1_000, tries: 1 });
    resolver.setServers([dns.server]);
    deps = { hostname: 'mx.ichidan.test', resolver, log: pino({ level: 'silent' }) };
    dir = await mkdtemp(join(tmpdir(), 'ichidan-auth-'));
  });
  afterAll(async () => {
    await dns?.close();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  const engine = (extra: Record<string, unknown> = {}) =>
    createMailauth(mailauthOptions.parse({ name: 'auth', type: 'mailauth', ...extra }), deps);

  async function scan(text: string, ctx: ScanContext, extra: Record<string, unknown> = {}, signal = AbortSignal.timeout(5_000)) {
    const msg = await spooled(dir, `m-${Math.random().toString(36).slice(2)}.eml`, text);
    return engine(extra).scan(msg, ctx, signal);
  }

  it('passes SPF for an allowed client IP, and DMARC through SPF alignment', async () => {
    const before = dns.queries.length;
    const r = await scan(mail('good.test', 'spf-pass'), context('alice@good.test', ALLOWED_IP));
    expect(r.outcome).toEqual({ status: 'clean' });
    expect(r.headers).toHaveLength(1);
    const header = r.headers![0];
    expect(header).toMatch(/^Authentication-Results: mx\.ichidan\.test;/);
    expect(header).toMatch(/spf=pass/);
    expect(header).toMatch(/dmarc=pass/);
    expect(header.endsWith('\r\n')).toBe(false);
    expect(r.detail).toMatchObject({ spf: { result: 'pass', domain: 'good.test' }, dmarc: { result: 'pass', p: 'reject' } });
    const asked = dns.queries.slice(before).map((q) => `${q.name}/${q.type}`);
    expect(asked).toContain(`good.test/${TXT}`);
    expect(asked).toContain(`_dmarc.good.test/${TXT}`);
  });

  it('fails SPF for a client the domain does not list', async () => {
    const r = await scan(mail('lax.test', 'spf-fail'), context('alice@lax.test', OTHER_IP));
    expect(r.headers![0]).toMatch(/spf=fail/);
    expect(r.detail).toMatchObject({ spf: { result: 'fail' } });
  });

  it('passes DKIM for a message signed with the key published in DNS, even when SPF fails', async () => {
    const text = await signed(mail('good.test', 'dkim-pass'), 'good.test', 'sel');
    const r = await scan(text, context('alice@good.test', OTHER_IP));
    expect(r.outcome).toEqual({ status: 'clean' });
    expect(r.headers![0]).toMatch(/dkim=pass header\.i=@good\.test header\.s=sel/);
    expect(r.headers![0]).toMatch(/spf=fail/);
    expect(r.headers![0]).toMatch(/dmarc=pass/);
    expect(r.detail).toMatchObject({ dkim: [{ result: 'pass', domain: 'good.test', selector: 'sel' }] });
  });

  it('fails DKIM for a signed message altered on the way', async () => {
    const text = (await signed(mail('good.test', 'dkim-fail'), 'good.test', 'sel')).replace('quarterly', 'monthly');
    const r = await scan(text, context('alice@good.test', OTHER_IP));
    expect(r.headers![0]).not.toMatch(/dkim=pass/);
    expect(r.outcome).toEqual({ status: 'violation', rule: 'dmarc=fail (p=reject) header.from=good.test', action: 'reject' });
  });

  it('turns a DMARC failure under p=reject into a reject violation', async () => {
    const r = await scan(mail('strict.test', 'dmarc-reject'), context('alice@strict.test', OTHER_IP));
    expect(r.outcome).toEqual({ status: 'violation', rule: 'dmarc=fail (p=reject) header.from=strict.test', action: 'reject' });
    expect(r.headers![0]).toMatch(/dmarc=fail/);
  });

  it('does what the operator asks for p=reject (onDmarcReject)', async () => {
    const r = await scan(mail('strict.test', 'dmarc-tag'), context('alice@strict.test', OTHER_IP), { onDmarcReject: 'tag' });
    expect(r.outcome).toMatchObject({ status: 'violation', action: 'tag' });
    const ignored = await scan(mail('strict.test', 'dmarc-ignore'), context('alice@strict.test', OTHER_IP), { onDmarcReject: 'ignore' });
    expect(ignored.outcome).toEqual({ status: 'clean' });
  });

  it('leaves a DMARC failure under p=none clean', async () => {
    const r = await scan(mail('lax.test', 'dmarc-none'), context('alice@lax.test', OTHER_IP));
    expect(r.outcome).toEqual({ status: 'clean' });
    expect(r.detail).toMatchObject({ dmarc: { result: 'fail', p: 'none' } });
  });

  it('applies the next lower policy outside the pct sample (pct=0: reject → quarantine)', async () => {
    const r = await scan(mail('sampled.test', 'dmarc-pct'), context('alice@sampled.test', OTHER_IP));
    expect(r.outcome).toEqual({ status: 'violation', rule: 'dmarc=fail (p=quarantine) header.from=sampled.test', action: 'quarantine' });
    expect(sampledPolicy('reject', 100, 0.999)).toBe('reject');
    expect(sampledPolicy('reject', 50, 0.2)).toBe('reject');
    expect(sampledPolicy('reject', 50, 0.7)).toBe('quarantine');
    expect(sampledPolicy('quarantine', 0, 0)).toBe('none');
  });

  it('reports a DNS failure as temperror and stays clean', async () => {
    const r = await scan(mail('broken.test', 'servfail'), context('alice@broken.test', OTHER_IP));
    expect(r.outcome).toEqual({ status: 'clean' });
    expect(r.headers![0]).toMatch(/spf=temperror/);
    expect(r.headers![0]).toMatch(/dmarc=temperror/);
    expect(r.detail).toMatchObject({ temperror: ['spf', 'dmarc'] });
    expect((r.detail!.dnsFailures as Array<{ code: string }>).map((f) => f.code)).toContain('ESERVFAIL');
  });

  it('skips mail submitted by an authenticated user, without a lookup', async () => {
    const before = dns.queries.length;
    const r = await scan(mail('strict.test', 'submission'), context('alice@strict.test', OTHER_IP, { authUser: 'alice' }));
    expect(r).toEqual({ outcome: { status: 'clean' }, detail: { skipped: 'authenticated' } });
    expect(dns.queries.length).toBe(before);
  });

  it('refuses to work without configured DNS servers', async () => {
    const msg = await spooled(dir, 'nodns.eml', mail('good.test', 'nodns'));
    const r = await createMailauth(mailauthOptions.parse({ name: 'auth', type: 'mailauth' }), { ...deps, resolver: null })
      .scan(msg, context('alice@good.test', ALLOWED_IP), AbortSignal.timeout(5_000));
    expect(r.outcome).toMatchObject({ status: 'error', error: 'refused' });
  });

  it('reports a spool file it cannot read as io', async () => {
    const r = await engine().scan(spoolMessage(join(dir, 'missing.eml'), 100), context('alice@good.test', ALLOWED_IP), AbortSignal.timeout(5_000));
    expect(r.outcome).toMatchObject({ status: 'error', error: 'io' });
  });

  it('sent every lookup to the loopback server, and only for names the messages named', () => {
    const known = new Set(['good.test', 'strict.test', 'lax.test', 'sampled.test', 'broken.test']);
    expect(dns.queries.length).toBeGreaterThan(10);
    for (const q of dns.queries) {
      const base = q.name.replace(/^_dmarc\.|^sel\._domainkey\./, '');
      expect(known.has(base), q.name).toBe(true);
    }
  });

  describe('at the deadline', () => {
    let silent: UdpSocket;
    beforeAll(async () => {
      silent = createSocket('udp4');
      await new Promise<void>((r) => silent.bind(0, '127.0.0.1', () => r()));
    });
    afterAll(() => silent?.close());

    it('abandons a lookup that never gets an answer and reports a timeout', async () => {
      const resolver = new dnsPromises.Resolver({ timeout: 10_000, tries: 1 });
      resolver.setServers([`127.0.0.1:${silent.address().port}`]);
      const slow = createMailauth(mailauthOptions.parse({ name: 'auth', type: 'mailauth' }), { ...deps, resolver });
      const msg = await spooled(dir, 'deadline.eml', mail('good.test', 'deadline'));
      const t0 = performance.now();
      const r = await slow.scan(msg, context('alice@good.test', ALLOWED_IP), AbortSignal.timeout(300));
      const ms = performance.now() - t0;
      expect(r.outcome).toMatchObject({ status: 'error', error: 'timeout' });
      expect(ms).toBeLessThan(1_500);
    });
  });
});
