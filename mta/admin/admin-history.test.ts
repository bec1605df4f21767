import { describe, expect, it } from 'vitest';
import { History, type HistoryTarget } from './admin-history.js';

function target(depth: Array<{ tenant: string; domain: string; n: number }>, sample = 10_000) {
  const flow = { accepted: 0, quarantined: 0, delivered: 0, deferred: 0, bounced: 0 };
  let level: 'normal' | 'busy' | 'overload' = 'normal';
  // The counters as the metrics register them: by listener or site too, summed by outcome.
  const counter = (values: () => Array<{ labels: Record<string, string>; value: number }>) => ({ get: async () => ({ values: values() }) });
  const metrics = new Map([
    ['ichidan_messages_total', counter(() => [
      { labels: { listener: 'mx', outcome: 'accepted' }, value: flow.accepted - 1 }, { labels: { listener: 'submission', outcome: 'accepted' }, value: 1 },
      { labels: { listener: 'mx', outcome: 'quarantined' }, value: flow.quarantined }, { labels: { listener: 'mx', outcome: 'refused' }, value: 50 },
    ])],
    ['ichidan_deliveries_total', counter(() => (['delivered', 'deferred', 'bounced'] as const).map((outcome) => ({ labels: { site: 'mx:x', outcome }, value: flow[outcome] })))],
  ]);
  const t = {
    config: { admin: { dashboard: { enabled: true, session: 3_600_000, sample } } },
    metrics: { getSingleMetric: (name: string) => metrics.get(name) },
    queue: {
      // As the depth thread sums the rows of its query (queue-depth-domains.ts).
      depthByDomain: async () => {
        const sum = { tenants: {} as Record<string, number>, domains: {} as Record<string, number> };
        for (const r of depth) {
          sum.tenants[r.tenant] = (sum.tenants[r.tenant] ?? 0) + r.n;
          sum.domains[r.domain] = (sum.domains[r.domain] ?? 0) + r.n;
        }
        return sum;
      },
      egress: { site: (domain: string) => (domain.startsWith('slow') ? new Promise(() => {}) : { key: `mx:mx.${domain}` }) },
    },
    admissionStatus: () => ({ mode: 'on', measuring: true, level }),
  } as unknown as HistoryTarget;
  return { t, flow, setLevel: (l: typeof level) => { level = l; } };
}

describe('the dashboard\'s history', () => {
  it('each point counts what happened within its step, with the depth per tenant and site', async () => {
    const { t, flow } = target([{ tenant: 'a', domain: 'x.test', n: 2 }, { tenant: 'b', domain: 'x.test', n: 1 }, { tenant: 'a', domain: 'slow.test', n: 4 }]);
    const h = new History(t);
    flow.accepted = 5;
    flow.delivered = 3;
    await h.sample(10_000);
    flow.accepted = 6;
    flow.quarantined = 1;
    flow.deferred = 2;
    await h.sample(20_000);
    const { step, points } = h.points('hour');
    expect(step).toBe(10);
    expect(points.map((p) => [p.accepted, p.delivered, p.deferred])).toEqual([[5, 3, 0], [2, 0, 2]]);
    expect(points[0].tenants).toEqual({ a: 6, b: 1 });
    expect(points[0].sites).toEqual({ 'mx:mx.x.test': 3, 'domain:slow.test': 4 });
  });

  it('keeps one hour at the sample step and a day at one a minute, the worst level of each minute', async () => {
    const { t, flow, setLevel } = target([]);
    const h = new History(t);
    const start = Date.now();
    for (let i = 1; i <= 400; i++) {
      flow.accepted = i;
      setLevel(i === 3 ? 'overload' : 'normal');
      await h.sample(start + i * 10_000);
    }
    expect(h.points('hour').points).toHaveLength(360);
    const day = h.points('day');
    expect(day.step).toBe(60);
    expect(day.points.length).toBeGreaterThanOrEqual(66);
    expect(day.points[0].level).toBe(2);
    expect(day.points.slice(1).every((p) => p.level === 0)).toBe(true);
    expect(day.points.reduce((n, p) => n + p.accepted, 0)).toBeLessThanOrEqual(400);
  });

  it('shows the deepest eight sites and counts the rest as other', async () => {
    const depth = Array.from({ length: 12 }, (_, i) => ({ tenant: 'a', domain: `d${i}.test`, n: i + 1 }));
    const h = new History(target(depth).t);
    await h.sample(1);
    const { sites } = h.points('hour').points[0];
    expect(Object.keys(sites)).toHaveLength(9);
    expect(sites.other).toBe(1 + 2 + 3 + 4);
    expect(sites['mx:mx.d11.test']).toBe(12);
  });

  it('shows the deepest eight tenants and counts the rest as other', async () => {
    const depth = Array.from({ length: 12 }, (_, i) => ({ tenant: `t${i}`, domain: 'x.test', n: i + 1 }));
    const h = new History(target(depth).t);
    await h.sample(1);
    const { tenants } = h.points('hour').points[0];
    expect(Object.keys(tenants)).toHaveLength(9);
    expect(tenants.other).toBe(1 + 2 + 3 + 4);
    expect(tenants.t11).toBe(12);
  });

  it('counts nothing, and still samples the depth, where the counters are not registered', async () => {
    const { t } = target([{ tenant: 'a', domain: 'x.test', n: 2 }]);
    const h = new History({ ...t, metrics: { getSingleMetric: () => undefined } } as HistoryTarget);
    await h.sample(1);
    expect(h.points('hour').points[0]).toMatchObject({ accepted: 0, delivered: 0, deferred: 0, bounced: 0, tenants: { a: 2 } });
  });
});
