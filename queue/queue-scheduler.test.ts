import { describe, expect, it } from 'vitest';
import { Scheduler, type Dispatch, type Job, type SiteCapacity, type TenantPolicy } from './queue-scheduler.js';

function job(tenant: string, domain: string, n: number, due = 0): Job {
  return { messageId: `${tenant}-${domain}-${n}`, tenant, domain, recipientIds: [n], due };
}

const tick = () => new Promise((r) => setImmediate(r));

/** A scheduler whose jobs run until the test finishes them; every domain is its own site unless `siteOf` says. */
function harness(opts: {
  concurrency?: number;
  laneConcurrency?: number;
  limits?: (site: string) => SiteCapacity;
  siteOf?: (domain: string) => string;
  policies?: Record<string, Partial<TenantPolicy>>;
  async?: boolean;
} = {}) {
  const running: Dispatch[] = [];
  const started: Dispatch[] = [];
  const finishers = new Map<Dispatch, () => void>();
  const limits = opts.limits ?? (() => ({ maxConnections: 100, initialConnections: 100 }));
  const s = new Scheduler({ concurrency: opts.concurrency ?? 100, laneConcurrency: opts.laneConcurrency ?? 100 }, {
    run: (d) => new Promise<void>((resolve) => {
      running.push(d);
      started.push(d);
      finishers.set(d, () => { running.splice(running.indexOf(d), 1); resolve(); });
    }),
    resolveSite: (domain) => {
      const key = opts.siteOf?.(domain) ?? domain;
      const ref = { key, limits: limits(key) };
      return opts.async ? new Promise((r) => setTimeout(() => r(ref), 10)) : ref;
    },
    tenantPolicy: (t) => ({ weight: 1, sources: [{ address: null, helo: null }], ...opts.policies?.[t] }),
  });
  return {
    s, running, started,
    async finish(d: Dispatch) { finishers.get(d)!(); await tick(); },
    async finishAll() { while (running.length > 0) await this.finish(running[0]); },
    at(site: string) { return running.filter((d) => d.site === site).length; },
  };
}

describe('scheduler', () => {
  it('never exceeds the total or the per-lane concurrency, and serves lanes in turn', async () => {
    const h = harness({ concurrency: 4, laneConcurrency: 2 });
    for (let i = 0; i < 10; i++) h.s.add(job('a', 'slow.test', i));
    h.s.add(job('b', 'x.test', 1));
    h.s.add(job('c', 'x.test', 1));
    expect(h.started.map((d) => `${d.job.tenant}/${d.job.domain}`)).toEqual(['a/slow.test', 'a/slow.test', 'b/x.test', 'c/x.test']);
    let peak = 0;
    while (h.running.length > 0) {
      peak = Math.max(peak, h.running.length);
      expect(h.running.filter((d) => d.job.domain === 'slow.test').length).toBeLessThanOrEqual(2);
      await h.finish(h.running[0]);
    }
    expect(peak).toBe(4);
    expect(h.started.filter((d) => d.job.domain === 'slow.test')).toHaveLength(10);
  });

  it('holds jobs until they are due', async () => {
    const h = harness();
    h.s.add(job('a', 'x.test', 1, Date.now() + 150));
    h.s.add(job('a', 'x.test', 2, Date.now()));
    await new Promise((r) => setTimeout(r, 20));
    expect(h.started.map((d) => d.job.messageId)).toEqual(['a-x.test-2']);
    await new Promise((r) => setTimeout(r, 250));
    expect(h.started.map((d) => d.job.messageId)).toEqual(['a-x.test-2', 'a-x.test-1']);
    h.s.stop();
  });

  it('shares one site between tenants in turn and never runs more than its limit there', async () => {
    // Three domains of three tenants hosted by one provider: one site with room for 10.
    const h = harness({ siteOf: () => 'mx:mx.provider.test', limits: () => ({ maxConnections: 10, initialConnections: 10 }) });
    // All the mail is queued while the site is held; a queued first, yet the ten slots go round the tenants.
    h.s.block({ id: 'held', site: 'mx:mx.provider.test', until: null });
    for (let i = 0; i < 60; i++) h.s.add(job('a', 'a.test', i));
    for (let i = 0; i < 30; i++) h.s.add(job('b', 'b.test', i));
    for (let i = 0; i < 30; i++) h.s.add(job('c', 'c.test', i));
    h.s.unblock('held');
    expect(h.started.map((d) => d.job.tenant).join('')).toBe('abcabcabca');
    const done = { a: 0, b: 0, c: 0 } as Record<string, number>;
    while (h.running.length > 0) {
      expect(h.running.length).toBeLessThanOrEqual(10);
      // b and c finish their 30 each while a, with twice the mail, is half-way: equal shares, not first come first served
      if (done.b < 30) expect(Math.abs(done.a - done.b)).toBeLessThanOrEqual(2);
      const d = h.running[0];
      done[d.job.tenant]++;
      await h.finish(d);
    }
    expect(done).toEqual({ a: 60, b: 30, c: 30 });
  });

  it('gives each tenant a share of a site by its weight', async () => {
    const h = harness({ siteOf: () => 'one', limits: () => ({ maxConnections: 1, initialConnections: 1 }), policies: { a: { weight: 2 } } });
    h.s.block({ id: 'held', site: 'one', until: null });
    for (let i = 0; i < 30; i++) { h.s.add(job('a', 'a.test', i)); h.s.add(job('b', 'b.test', i)); }
    h.s.unblock('held');
    for (let i = 0; i < 30; i++) await h.finish(h.running[0]);
    const first30 = h.started.slice(0, 30).map((d) => d.job.tenant);
    expect(first30.filter((t) => t === 'a')).toHaveLength(20);
    await h.finishAll();
  });

  it('gives a tenant with a weight below 1 its smaller share', async () => {
    const h = harness({ siteOf: () => 'one', limits: () => ({ maxConnections: 1, initialConnections: 1 }), policies: { a: { weight: 0.25 } } });
    h.s.block({ id: 'held', site: 'one', until: null });
    for (let i = 0; i < 40; i++) { h.s.add(job('a', 'a.test', i)); h.s.add(job('b', 'b.test', i)); }
    h.s.unblock('held');
    for (let i = 0; i < 40; i++) await h.finish(h.running[0]);
    const a = h.started.slice(0, 40).filter((d) => d.job.tenant === 'a').length;
    expect(a).toBeGreaterThanOrEqual(7);
    expect(a).toBeLessThanOrEqual(9);
    await h.finishAll();
  });

  it('applies a lowered site limit to a pair it already knows', async () => {
    let max = 5;
    const h = harness({ limits: () => ({ maxConnections: max, initialConnections: max }) });
    for (let i = 0; i < 5; i++) h.s.add(job('a', 'x.test', i));
    expect(h.running).toHaveLength(5);
    await h.finishAll();
    max = 2;
    for (let i = 5; i < 10; i++) h.s.add(job('a', 'x.test', i));
    expect(h.running).toHaveLength(2);
    await h.finishAll();
  });

  it('drops live turns whose session gave up, without spending the rate on them', async () => {
    const h = harness({ limits: () => ({ maxConnections: 5, initialConnections: 5, messageRate: { count: 1, perMs: 60_000 } }) });
    const site = { key: 'x.test', limits: { maxConnections: 5, initialConnections: 5, messageRate: { count: 1, perMs: 60_000 } } };
    h.s.block({ id: 'held', site: 'x.test', until: null });
    let ran = 0;
    for (let i = 0; i < 5; i++) h.s.add({ ...job('p', 'x.test', i), live: { site, cancelled: () => true, run: async () => { ran++; } } });
    h.s.add(job('a', 'x.test', 99));
    h.s.unblock('held');
    await tick();
    // four of the given-up turns were dropped, one ran at no cost, and the real job still found the rate's token
    expect(ran).toBe(1);
    expect(h.started.map((d) => d.job.messageId)).toEqual(['a-x.test-99']);
    await h.finishAll();
  });

  it('admits a live session\'s further transactions by the same blocks and rates', async () => {
    const h = harness({ limits: () => ({ maxConnections: 5, initialConnections: 5, messageRate: { count: 2, perMs: 60_000 } }), policies: { c: { suspended: true } } });
    h.s.add(job('a', 'x.test', 1));
    expect(h.s.admit('x.test', null, 'a')).toBeNull();
    expect(h.s.admit('x.test', null, 'a')).toBe('the message rate of x.test is reached');
    expect(h.s.admit('x.test', null, 'c')).toBe('tenant c is suspended');
    h.s.block({ id: 'h', tenant: 'b', site: 'x.test', until: null });
    expect(h.s.admit('x.test', null, 'b')).toBe('held or suspended at x.test');
    h.s.block({ id: 'p', site: 'x.test', source: '', until: null });
    expect(h.s.admit('x.test', null, 'a')).toBe('x.test is paused for the default source');
    await h.finishAll();
  });

  it('keeps a full site (a tarpit) from taking the slots of other sites', async () => {
    const h = harness({ concurrency: 8, limits: (site) => site === 'tarpit.test' ? { maxConnections: 3, initialConnections: 3 } : { maxConnections: 20, initialConnections: 20 } });
    for (let i = 0; i < 100; i++) h.s.add(job('c', 'tarpit.test', i));
    for (let i = 0; i < 20; i++) h.s.add(job('a', 'good.test', i));
    expect(h.at('tarpit.test')).toBe(3);
    expect(h.at('good.test')).toBe(5);
    // the tarpit never answers; the healthy site's mail all goes through the remaining slots
    let served = 0;
    while (served < 20) {
      const d = h.running.find((x) => x.site === 'good.test')!;
      await h.finish(d);
      served++;
      expect(h.at('tarpit.test')).toBe(3);
    }
    expect(h.started.filter((d) => d.site === 'good.test')).toHaveLength(20);
  });

  it('starts a site at its initial window and grows it with successes (slow start); shrinks it on trouble', async () => {
    const h = harness({ limits: () => ({ maxConnections: 6, initialConnections: 2 }) });
    for (let i = 0; i < 100; i++) h.s.add(job('a', 'x.test', i));
    expect(h.running).toHaveLength(2);
    const peaks: number[] = [];
    for (let i = 0; i < 40; i++) {
      const d = h.running[0];
      h.s.feedback(d.site, null, 'ok');
      await h.finish(d);
      peaks.push(h.running.length);
    }
    expect(Math.max(...peaks)).toBe(6);
    expect(peaks[0]).toBeLessThan(4);
    h.s.feedback('x.test', null, 'throttled');
    expect(h.s.window('x.test', null)).toBe(3);
    h.s.feedback('x.test', null, 'slow');
    expect(h.s.window('x.test', null)).toBe(2);
    await h.finishAll();
    expect(h.running).toHaveLength(0);
  });

  it('blocks a tenant, a site, a tenant at a site; an expiring block lifts by itself', async () => {
    const h = harness();
    h.s.block({ id: 't', tenant: 'a', until: null });
    h.s.block({ id: 's', site: 'x.test', until: null });
    h.s.block({ id: 'ts', tenant: 'b', site: 'y.test', until: Date.now() + 120 });
    h.s.add(job('a', 'y.test', 1));
    h.s.add(job('b', 'x.test', 1));
    h.s.add(job('b', 'y.test', 2));
    h.s.add(job('c', 'y.test', 3));
    expect(h.started.map((d) => d.job.messageId)).toEqual(['c-y.test-3']);
    await new Promise((r) => setTimeout(r, 200));
    expect(h.started.map((d) => d.job.messageId)).toEqual(['c-y.test-3', 'b-y.test-2']);
    h.s.unblock('t');
    expect(h.started.map((d) => d.job.messageId)).toContain('a-y.test-1');
    h.s.unblock('s');
    expect(h.started.map((d) => d.job.messageId)).toContain('b-x.test-1');
    h.s.stop();
  });

  it('moves a tenant to another source address of its pool when one pair is paused, and spreads load across the pool', async () => {
    const sources = [{ address: '127.0.0.10', helo: 'one.test' }, { address: '127.0.0.11', helo: 'two.test' }];
    const h = harness({ limits: () => ({ maxConnections: 2, initialConnections: 2 }), policies: { a: { sources } } });
    for (let i = 0; i < 4; i++) h.s.add(job('a', 'x.test', i));
    expect(h.running.map((d) => d.source.address).sort()).toEqual(['127.0.0.10', '127.0.0.10', '127.0.0.11', '127.0.0.11']);
    await h.finishAll();
    h.s.block({ id: 'p', site: 'x.test', source: '127.0.0.10', until: null });
    for (let i = 4; i < 8; i++) h.s.add(job('a', 'x.test', i));
    expect(h.running.map((d) => d.source.address)).toEqual(['127.0.0.11', '127.0.0.11']);
    expect(h.running[0].source.helo).toBe('two.test');
    await h.finishAll();
  });

  it('keeps a site within its message rate', async () => {
    const h = harness({ limits: () => ({ maxConnections: 10, initialConnections: 10, messageRate: { count: 2, perMs: 200 } }) });
    for (let i = 0; i < 5; i++) h.s.add(job('a', 'x.test', i));
    expect(h.started).toHaveLength(2);
    await h.finishAll();
    expect(h.started).toHaveLength(2);
    await new Promise((r) => setTimeout(r, 130));
    expect(h.started.length).toBeGreaterThanOrEqual(3);
    expect(h.started.length).toBeLessThanOrEqual(4);
    h.s.stop();
  });

  it('caps a tenant\'s concurrency and its messages per hour; the config can suspend it', async () => {
    const h = harness({ policies: { a: { concurrency: 2 }, b: { messagesPerHour: 3 }, c: { suspended: true } } });
    for (let i = 0; i < 5; i++) { h.s.add(job('a', `a${i}.test`, i)); h.s.add(job('b', `b${i}.test`, i)); h.s.add(job('c', 'c.test', i)); }
    expect(h.running.filter((d) => d.job.tenant === 'a')).toHaveLength(2);
    expect(h.running.filter((d) => d.job.tenant === 'b')).toHaveLength(3);
    expect(h.running.filter((d) => d.job.tenant === 'c')).toHaveLength(0);
    await h.finishAll();
    expect(h.started.filter((d) => d.job.tenant === 'a')).toHaveLength(5);
    expect(h.started.filter((d) => d.job.tenant === 'b')).toHaveLength(3);
    h.s.stop();
  });

  it('waits for a site lookup without holding a slot, then places the jobs', async () => {
    const h = harness({ async: true, concurrency: 1 });
    h.s.add(job('a', 'x.test', 1));
    h.s.add(job('a', 'x.test', 2));
    expect(h.started).toHaveLength(0);
    expect(h.s.waiting).toBe(2);
    await new Promise((r) => setTimeout(r, 30));
    expect(h.started).toHaveLength(1);
    await h.finishAll();
    expect(h.started).toHaveLength(2);
  });
});
