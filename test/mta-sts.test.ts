// Outbound TLS policy: MTA-STS enforce / testing / none and per-domain tlsPolicy, against sinks with
// certificates from a test CA, a loopback DNS server and an HTTPS policy server.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable, Writable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Egress, SessionCache, StsPolicyCache, type OutboundMessage } from '../delivery/index.js';
import { parseConfig } from '../mta/mta-config.js';
import type { ConfigInput } from '../mta/mta-config-schema.js';
import { createLogger } from '../mta/mta-log.js';
import { startDns, type TestDns } from './helpers/dns-server.js';
import { startPolicyServer, type PolicyServer } from './helpers/policy-server.js';
import { startSink, type Sink } from './helpers/sink.js';
import { makeTestCa } from './helpers/test-ca.js';

describe('outbound TLS policy (MTA-STS, tlsPolicy)', () => {
  const PORT = 20000 + Math.floor(Math.random() * 20000);
  let dir: string;
  let caFile: string;
  let dns: TestDns;
  let policies: PolicyServer;
  let good: Sink; // 127.0.0.21, certificate for mx.good.test from the test CA
  let wrongName: Sink; // 127.0.0.22, certificate for elsewhere.test from the test CA
  let testingBox: Sink; // 127.0.0.23, the same wrong-name certificate
  let plain: Sink; // 127.0.0.24, no STARTTLS at all
  const logs: Array<Record<string, unknown>> = [];
  const sessions = new SessionCache();
  const stsCache = new StsPolicyCache();
  let egress: Egress;
  let n = 0;

  const policy = (mode: string, ...mx: string[]) => `version: STSv1\r\nmode: ${mode}\r\n${mx.map((m) => `mx: ${m}\r\n`).join('')}max_age: 86400\r\n`;
  const sts = (id: string) => ({ txt: [`v=STSv1; id=${id};`] });

  function message(to: string): OutboundMessage {
    n++;
    return {
      queueId: `Q${n}`, tenant: 'default', sender: 'me@sender.test',
      recipients: [{ id: n, address: to, notify: null, orcpt: null }],
      size: 40, ret: null, envid: null, body8bit: false,
      open: () => Readable.from([`Subject: ${to}\r\n\r\nTLS policy test\r\n`]),
    };
  }

  function makeEgress(extra: Partial<ConfigInput['delivery']> = {}, top: Partial<ConfigInput> = {}): Egress {
    const config = parseConfig({
      hostname: 'out.ichidan.test',
      dataDir: dir,
      dns: { servers: [dns.server], timeout: '1s' },
      ...top,
      delivery: { mxPort: PORT, connectTimeout: '2s', tls: { caFile }, mtaSts: { policyPort: policies.port }, ...extra },
    });
    const log = createLogger('info', new Writable({
      write(chunk, _enc, cb) {
        for (const line of String(chunk).split('\n')) if (line) logs.push(JSON.parse(line));
        cb();
      },
    }));
    return new Egress(config, sessions, { policies: stsCache, log });
  }

  async function deliver(e: Egress, to: string) {
    const r = await e.deliver(to.split('@')[1], message(to));
    if (r.kind !== 'outcomes') throw new Error('held');
    return r.outcomes[0];
  }

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'ichidan-mtasts-'));
    const ca = await makeTestCa();
    caFile = await ca.save(join(dir, 'ca.pem'));
    const goodCert = await ca.issue(['mx.good.test']);
    const wrongCert = await ca.issue(['elsewhere.test']);
    good = await startSink({ host: '127.0.0.21', port: PORT, ...goodCert });
    wrongName = await startSink({ host: '127.0.0.22', port: PORT, ...wrongCert });
    testingBox = await startSink({ host: '127.0.0.23', port: PORT, ...wrongCert });
    plain = await startSink({ host: '127.0.0.24', port: PORT, hideStartTls: true });
    const names = ['good', 'wrong', 'outside', 'testing', 'none', 'cached'].map((d) => `mta-sts.${d}.test`);
    policies = await startPolicyServer('127.0.0.20', await ca.issue(names), {
      'mta-sts.good.test': policy('enforce', 'mx.good.test'),
      'mta-sts.wrong.test': policy('enforce', '*.wrong.test'),
      'mta-sts.outside.test': policy('enforce', 'mx.good.test'),
      'mta-sts.testing.test': policy('testing', 'mx.testing.test'),
      'mta-sts.none.test': policy('none'),
      'mta-sts.cached.test': policy('enforce', 'mx.good.test'),
    });
    const zones: Parameters<typeof startDns>[0] = {
      'mx.good.test': { a: ['127.0.0.21'] },
      'mx.wrong.test': { a: ['127.0.0.22'] },
      'mx.outside.test': { a: ['127.0.0.21'] },
      'mx.testing.test': { a: ['127.0.0.23'] },
      'mx.testing-elsewhere.test': { a: ['127.0.0.23'] },
      'mx.none.test': { a: ['127.0.0.22'] },
      'mx.plain.test': { a: ['127.0.0.24'] },
      'good.test': { mx: [{ exchange: 'mx.good.test', priority: 10 }] },
      'wrong.test': { mx: [{ exchange: 'mx.wrong.test', priority: 10 }] },
      'outside.test': { mx: [{ exchange: 'mx.outside.test', priority: 10 }] },
      'testing.test': { mx: [{ exchange: 'mx.testing.test', priority: 10 }, { exchange: 'mx.testing-elsewhere.test', priority: 20 }] },
      'none.test': { mx: [{ exchange: 'mx.none.test', priority: 10 }] },
      'cached.test': { mx: [{ exchange: 'mx.good.test', priority: 10 }] },
      'verified.test': { mx: [{ exchange: 'mx.good.test', priority: 10 }] },
      'verified-bad.test': { mx: [{ exchange: 'mx.wrong.test', priority: 10 }] },
      'required.test': { mx: [{ exchange: 'mx.plain.test', priority: 10 }] },
      'private.test': { mx: [{ exchange: 'mx.wrong.test', priority: 10 }] },
      '_mta-sts.good.test': sts('1'),
      '_mta-sts.wrong.test': sts('1'),
      '_mta-sts.outside.test': sts('1'),
      '_mta-sts.testing.test': sts('1'),
      '_mta-sts.none.test': sts('1'),
      '_mta-sts.cached.test': sts('1'),
      '_mta-sts.private.test': sts('1'),
    };
    for (const d of names) zones[d] = { a: ['127.0.0.20'] };
    dns = await startDns(zones);
    egress = makeEgress();
  });

  afterAll(async () => {
    await sessions.closeAll();
    await dns?.close();
    await policies?.close();
    await Promise.all([good, wrongName, testingBox, plain].map((s) => s?.close()));
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it('enforce + a valid certificate: delivered over verified TLS', async () => {
    const before = good.messages.length;
    const o = await deliver(egress, 'a@good.test');
    expect(o).toMatchObject({ verdict: 'delivered', host: expect.stringContaining('mx.good.test[127.0.0.21]') });
    expect(good.messages).toHaveLength(before + 1);
    expect(good.messages.at(-1)!.secure).toBe(true);
    expect(dns.queries).toEqual(expect.arrayContaining([{ name: '_mta-sts.good.test', type: 16 }, { name: 'mta-sts.good.test', type: 1 }]));
  });

  it('enforce + a certificate for another name: deferred with 4.7.5, nothing sent', async () => {
    const o = await deliver(egress, 'a@wrong.test');
    expect(o).toMatchObject({ verdict: 'deferred', code: 451, status: '4.7.5' });
    expect(o.reply).toMatch(/MTA-STS policy of wrong\.test \(enforce\).*certificate/);
    expect(wrongName.messages).toHaveLength(0);
    expect(wrongName.rcptAttempts.size).toBe(0);
  });

  it('enforce + an MX outside the policy: deferred without connecting', async () => {
    const before = good.messages.length;
    const o = await deliver(egress, 'a@outside.test');
    expect(o).toMatchObject({ verdict: 'deferred', status: '4.7.5' });
    expect(o.reply).toMatch(/MTA-STS.*outside\.test.*no MX host matches/);
    expect(good.messages).toHaveLength(before);
  });

  it('testing + a bad certificate and an MX outside the policy: delivered, both logged', async () => {
    const o = await deliver(egress, 'a@testing.test');
    expect(o.verdict).toBe('delivered');
    expect(testingBox.messages).toHaveLength(1);
    const warnings = logs.filter((l) => l.level === 40 && l.domain === 'testing.test');
    expect(warnings).toEqual(expect.arrayContaining([
      expect.objectContaining({ mx: 'mx.testing.test', reason: expect.stringMatching(/certificate not valid/) }),
      expect.objectContaining({ mx: 'mx.testing-elsewhere.test', reason: expect.stringMatching(/not in the policy/) }),
    ]));
  });

  it('mode none: delivered opportunistically to a certificate for another name', async () => {
    const o = await deliver(egress, 'a@none.test');
    expect(o.verdict).toBe('delivered');
    expect(wrongName.messages.at(-1)).toMatchObject({ rcptTo: ['a@none.test'], secure: true });
    expect(logs.filter((l) => l.domain === 'none.test')).toHaveLength(0);
  });

  it('caches the policy; a changed TXT id fetches it again', async () => {
    await deliver(egress, 'a@cached.test');
    await deliver(egress, 'b@cached.test');
    expect(policies.requests.get('mta-sts.cached.test')).toBe(1);
    dns.zones.set('_mta-sts.cached.test', sts('2'));
    policies.policies.set('mta-sts.cached.test', policy('enforce', 'mx.other.test'));
    const o = await deliver(egress, 'c@cached.test');
    expect(policies.requests.get('mta-sts.cached.test')).toBe(2);
    expect(o).toMatchObject({ verdict: 'deferred', status: '4.7.5' });
  });

  it('keeps enforcing a cached policy while the policy server is down', async () => {
    policies.down = true;
    try {
      dns.zones.set('_mta-sts.cached.test', sts('3'));
      dns.zones.set('cached.test', { mx: [{ exchange: 'mx.wrong.test', priority: 10 }] });
      const before = policies.requests.get('mta-sts.cached.test')!;
      const o = await deliver(egress, 'd@cached.test');
      expect(policies.requests.get('mta-sts.cached.test')).toBe(before + 1);
      expect(o).toMatchObject({ verdict: 'deferred', status: '4.7.5' });
      expect(o.reply).toMatch(/MTA-STS policy of cached\.test/);
      expect(wrongName.messages.some((m) => m.rcptTo.includes('d@cached.test'))).toBe(false);
    } finally {
      policies.down = false;
    }
  });

  it('tlsPolicy require-verified without MTA-STS: a valid certificate delivers, a wrong one defers', async () => {
    const e = makeEgress({ tlsPolicy: { 'verified.test': 'require-verified', '.verified-bad.test': 'none', 'verified-bad.test': 'require-verified' } });
    expect(await deliver(e, 'a@verified.test')).toMatchObject({ verdict: 'delivered' });
    expect(good.messages.at(-1)).toMatchObject({ rcptTo: ['a@verified.test'], secure: true });
    const bad = await deliver(e, 'a@verified-bad.test');
    expect(bad).toMatchObject({ verdict: 'deferred', status: '4.7.5', reply: expect.stringMatching(/TLS policy "verified-bad\.test"/) });
    expect(dns.queries.some((q) => q.name === '_mta-sts.verified.test')).toBe(false);
  });

  it('tlsPolicy require: a host without STARTTLS defers; opportunistic overrides an MTA-STS policy for a private host', async () => {
    const e = makeEgress({ tlsPolicy: { 'required.test': 'require', 'private.test': 'opportunistic' } });
    expect(await deliver(e, 'a@required.test')).toMatchObject({ verdict: 'deferred', status: '4.7.5', reply: expect.stringMatching(/STARTTLS/) });
    expect(plain.messages).toHaveLength(0);
    expect(await deliver(e, 'a@private.test')).toMatchObject({ verdict: 'delivered' });
    expect(dns.queries.some((q) => q.name === '_mta-sts.private.test')).toBe(false);
  });

  it('a reused session keeps the TLS level it was opened with', async () => {
    // mx.wrong.test has an idle opportunistic session from 'private.test'; require-verified must not take it.
    const e = makeEgress({ tlsPolicy: { 'private.test': 'require-verified' } });
    expect(await deliver(e, 'b@private.test')).toMatchObject({ verdict: 'deferred', status: '4.7.5' });
  });

  it('static routes bypass MTA-STS; without dns.servers no lookup is made at all', async () => {
    const routed = makeEgress({}, { routes: { 'wrong.test': { host: '127.0.0.22', port: PORT } } });
    const queried = dns.queries.length;
    expect(await deliver(routed, 'routed@wrong.test')).toMatchObject({ verdict: 'delivered' });
    expect(dns.queries.length).toBe(queried);
    const noDns = parseConfig({
      hostname: 'out.ichidan.test', dataDir: dir,
      routes: { 'good.test': { host: '127.0.0.21', port: PORT } },
      delivery: { tls: { caFile }, mtaSts: { policyPort: policies.port } },
    });
    const fetched = [...policies.requests.values()].reduce((a, b) => a + b, 0);
    const o = await deliver(new Egress(noDns, sessions, { policies: new StsPolicyCache() }), 'x@good.test');
    expect(o.verdict).toBe('delivered');
    expect(dns.queries.length).toBe(queried);
    expect([...policies.requests.values()].reduce((a, b) => a + b, 0)).toBe(fetched);
  });

  it('asked only the loopback DNS server for every name it needed', () => {
    const names = new Set(dns.queries.map((q) => q.name));
    for (const d of ['good', 'wrong', 'outside', 'testing', 'none', 'cached']) {
      expect(names.has(`_mta-sts.${d}.test`)).toBe(true);
    }
    for (const d of ['good', 'wrong', 'testing', 'none', 'cached']) expect(names.has(`mta-sts.${d}.test`)).toBe(true);
  });
  it('through a running Ichidan: enforce defers with 4.7.5 and sends nothing, testing delivers and warns', async () => {
    const { startApp, waitUntil } = await import('./helpers/app.js');
    const nodemailer = (await import('nodemailer')).default;
    const t = await startApp((dataDir) => ({
      hostname: 'mx.ichidan.test', dataDir, log: { level: 'info' },
      listeners: [{ name: 'mx', role: 'mx', port: 0 }], trustedNetworks: ['127.0.0.1/32'],
      dns: { servers: [dns.server], timeout: '1s' },
      queue: { retryInitial: '1h', retryJitter: 0 },
      delivery: { mxPort: PORT, connectTimeout: '2s', tls: { caFile }, mtaSts: { policyPort: policies.port } },
    }));
    try {
      const wrongBefore = wrongName.messages.length;
      const testingBefore = testingBox.messages.length;
      const tx = nodemailer.createTransport({ host: '127.0.0.1', port: t.port('mx'), ignoreTLS: true });
      await tx.sendMail({ from: 'me@sender.test', to: 'z@wrong.test', text: 'enforced' });
      await tx.sendMail({ from: 'me@sender.test', to: 'z@testing.test', text: 'testing' });
      tx.close();
      await waitUntil(() => t.logs.filter((l) => l.msg === 'delivery attempt').length >= 2, 10_000, 'both attempts');
      const attempts = Object.fromEntries(t.logs.filter((l) => l.msg === 'delivery attempt').map((l) => [l.rcpt, l]));
      expect(attempts['z@wrong.test']).toMatchObject({ verdict: 'deferred', status: '4.7.5' });
      expect(attempts['z@testing.test']).toMatchObject({ verdict: 'delivered' });
      expect(wrongName.messages.length).toBe(wrongBefore);
      expect(testingBox.messages.length).toBe(testingBefore + 1);
      expect(t.logs.some((l) => l.msg === 'MTA-STS testing policy would refuse this MX' && l.domain === 'testing.test')).toBe(true);
    } finally {
      await t.stop();
    }
  });
});
