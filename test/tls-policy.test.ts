// delivery.tlsPolicy per domain without MTA-STS: require-verified, require, opportunistic overriding an
// MTA-STS policy, a reused session keeping the TLS level it was opened with; static routes bypass
// MTA-STS and, without dns.servers, no lookup is made (helpers/tls-policy-world.ts).
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Egress, StsPolicyCache } from '../delivery/index.js';
import { parseConfig } from './helpers/app.js';
import type { TestDns } from './helpers/dns-server.js';
import type { PolicyServer } from './helpers/policy-server.js';
import type { Sink } from './helpers/sink.js';
import { startTlsWorld, type TlsWorld } from './helpers/tls-policy-world.js';

describe('outbound TLS policy: tlsPolicy and static routes', () => {
  let w: TlsWorld;
  let PORT: number;
  let dir: string;
  let caFile: string;
  let dns: TestDns;
  let policies: PolicyServer;
  let good: Sink;
  let plain: Sink;
  let sessions: TlsWorld['sessions'];
  let makeEgress: TlsWorld['makeEgress'];
  let deliver: TlsWorld['deliver'];

  beforeAll(async () => {
    w = await startTlsWorld();
    ({ PORT, dir, caFile, dns, policies, good, plain, sessions, makeEgress, deliver } = w);
  });
  afterAll(async () => { await w?.close(); });

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
});
