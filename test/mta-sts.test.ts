// MTA-STS (RFC 8461) for outbound delivery: enforce, testing and none against sinks with certificates
// from a test CA; the policy cached until its TXT id changes, and enforced from the cache while the
// policy server is down; every name asked of the loopback DNS server (helpers/tls-policy-world.ts).
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Egress } from '../delivery/index.js';
import type { TestDns } from './helpers/dns-server.js';
import type { PolicyServer } from './helpers/policy-server.js';
import type { Sink } from './helpers/sink.js';
import { policy, startTlsWorld, sts, type TlsWorld } from './helpers/tls-policy-world.js';

describe('outbound TLS policy: MTA-STS', () => {
  let w: TlsWorld;
  let dns: TestDns;
  let policies: PolicyServer;
  let good: Sink;
  let wrongName: Sink;
  let testingBox: Sink;
  let logs: TlsWorld['logs'];
  let egress: Egress;
  let makeEgress: TlsWorld['makeEgress'];
  let deliver: TlsWorld['deliver'];

  beforeAll(async () => {
    w = await startTlsWorld();
    ({ dns, policies, good, wrongName, testingBox, logs, makeEgress, deliver } = w);
    egress = makeEgress();
  });
  afterAll(async () => { await w?.close(); });

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

  it('asked only the loopback DNS server for every name it needed', () => {
    const names = new Set(dns.queries.map((q) => q.name));
    for (const d of ['good', 'wrong', 'outside', 'testing', 'none', 'cached']) {
      expect(names.has(`_mta-sts.${d}.test`)).toBe(true);
    }
    for (const d of ['good', 'wrong', 'testing', 'none', 'cached']) expect(names.has(`mta-sts.${d}.test`)).toBe(true);
  });
});
