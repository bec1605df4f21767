import { randomBytes } from 'node:crypto';
import { Registry } from 'prom-client';
import { describe, expect, it } from 'vitest';
import { REPLIES, reply, structureRefused, virusFound } from '../base/base-reply.js';
import type { DepthRow } from '../queue/index.js';
import { OTHER, replyReason, SITE_LABELS_MAX, SiteLabels, tenantLabel } from './mta-metrics-labels.js';
import { trafficMetrics } from './mta-metrics-traffic.js';

const random = () => randomBytes(6).toString('hex');

/** Distinct label sets per metric family, as the registry would expose them. */
async function series(registry: Registry): Promise<Map<string, number>> {
  const counts = new Map<string, number>();
  for (const m of await registry.getMetricsAsJSON()) counts.set(m.name, m.values.length);
  return counts;
}

describe('metric labels', () => {
  it('keeps configured tenants and _relay, and counts every other tenant as _other', () => {
    const tenants = { shop: {}, news: {} };
    expect(tenantLabel(tenants, 'shop')).toBe('shop');
    expect(tenantLabel(tenants, '_relay')).toBe('_relay');
    expect(tenantLabel(tenants, null)).toBe('_relay');
    expect(tenantLabel(tenants, 'gone')).toBe(OTHER);
    expect(tenantLabel(tenants, 'constructor')).toBe(OTHER);
  });

  it('labels named sites as they are and caps the others', () => {
    const sites = new SiteLabels(3);
    expect(['mx:a', 'mx:b', 'mx:c', 'mx:d', 'mx:a'].map((s) => sites.label(s))).toEqual(['mx:a', 'mx:b', 'mx:c', OTHER, 'mx:a']);
    expect(sites.label('site:google')).toBe('site:google');
  });

  it('names a reply by the catalogue, an engine verdict as scan, anything else as other', () => {
    expect(replyReason(REPLIES.tooManyConnections)).toBe('tooManyConnections');
    expect(replyReason(reply(421, '4.3.2', 'this server is being drained and takes no new mail, try another'))).toBe('draining');
    expect(replyReason(virusFound('Eicar'), true)).toBe('scan');
    expect(replyReason(structureRefused('too deep'))).toBe('structure');
    expect(replyReason(reply(554, '5.7.1', `${random()} may not use this proxy`))).toBe('other');
  });
});

describe('traffic metrics', () => {
  it('stays bounded with 1,000 random tenants, sites and replies', async () => {
    const registry = new Registry();
    const tenants = { shop: {} };
    const depth: DepthRow[] = [];
    const hooks = trafficMetrics([registry], { tenants: () => tenants, depth: async () => depth });
    for (let i = 0; i < 1000; i++) {
      const tenant = random();
      hooks.ingress.message('mx', tenant, 'refused', reply(550, '5.7.1', `refused ${random()}`), false);
      hooks.ingress.connectionRefused('mx', reply(421, '4.7.0', random()));
      hooks.attempt({ tenant, site: `mx:${random()}.example`, outcome: 'deferred', class: 'other' });
      hooks.session({ site: `mx:${random()}.example`, tenant, queueId: 'q', host: 'h', address: '192.0.2.1', port: 25, tls: { protocol: 'TLSv1.3', cipher: 'x' }, session: null });
      depth.push({ tenant, state: 'queued', recipients: 1, oldest: Date.now() - 1000 });
    }
    hooks.attempt({ tenant: 'shop', site: 'site:big', outcome: 'delivered', class: null });
    const counts = await series(registry);
    expect(counts.get('ichidan_messages_total')).toBe(1);
    expect(counts.get('ichidan_connections_refused_total')).toBe(1);
    expect(counts.get('ichidan_deliveries_total')).toBeLessThanOrEqual(SITE_LABELS_MAX + 2);
    expect(counts.get('ichidan_deferrals_total')).toBe(1);
    expect(counts.get('ichidan_outbound_sessions_total')).toBeLessThanOrEqual(SITE_LABELS_MAX + 1);
    expect(counts.get('ichidan_queue_recipients')).toBe(1);
    const text = await registry.metrics();
    expect(text).toContain('ichidan_queue_recipients{tenant="_other",state="queued"} 1000');
    expect(text).toContain('ichidan_deliveries_total{tenant="shop",site="site:big",outcome="delivered"} 1');
    expect(text).toMatch(/ichidan_deliveries_total\{tenant="_other",site="_other",outcome="deferred"\} 9\d\d/);
  });

  it('counts each engine run by verdict and times those that ran', async () => {
    const registry = new Registry();
    const hooks = trafficMetrics([registry], { tenants: () => ({}), depth: async () => [] });
    const run = (engine: string, status: 'clean' | 'skipped', ms: number) => ({ engine, kind: 'av' as const, shadow: false, version: null, ms, status });
    hooks.scan({ queueId: 'q', at: 0, generation: 1, action: 'accept', reason: '', tenants: [], ms: 30, overheadMs: 1, runs: [run('clamav', 'clean', 20), run('rspamd', 'skipped', 0)] });
    const text = await registry.metrics();
    expect(text).toContain('ichidan_scan_verdicts_total{engine="clamav",verdict="clean"} 1');
    expect(text).toContain('ichidan_scan_verdicts_total{engine="rspamd",verdict="skipped"} 1');
    expect(text).toContain('ichidan_scan_seconds_bucket{le="0.025",engine="clamav"} 1');
    expect(text).not.toMatch(/ichidan_scan_seconds_count\{engine="rspamd"\}/);
  });
});
