/*
 * Throttle evidence summed across nodes (real redis-server): each node's counts are flushed into
 * the site's time buckets, and attribution on one node sees the others' — a tenant that
 * dominates the cluster's traffic at a site is suspended by a node that alone saw little of it.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { parseConfig } from '../../mta/index.js';
import { redisSupport, startRedis, type TestRedis } from '../../test/helpers/redis.js';
import { EgressControl } from '../queue-egress-control.js';
import { QueueRecords } from '../queue-records.js';
import { Scheduler } from '../queue-scheduler.js';
import { QueueStore } from '../queue-store.js';
import { clusterSchema } from './cluster-config.js';
import { ClusterLink } from './cluster-link.js';
import { bucketSize, ClusterSignals } from './cluster-signals.js';

const log = pino({ level: 'silent' });
const support = redisSupport();
const SITE = 'mx:mx.test';
const WINDOW = 600_000;
const ok = { kind: 'ok' as const, detail: '' };
const throttled = { kind: 'throttled' as const, detail: '421 4.7.0 too many connections' };

describe.skipIf(!support.ok)('throttle evidence across nodes (real Redis)', () => {
  let redis: TestRedis;
  const links: ClusterLink[] = [];
  const cleanup: Array<() => Promise<void>> = [];

  beforeAll(async () => { redis = await startRedis(); });
  afterAll(async () => { await redis?.stop(); });
  afterEach(async () => {
    for (const c of cleanup.splice(0)) await c();
    for (const l of links.splice(0)) await l.close();
    await redis.client().flushall();
  });

  async function link(name: string): Promise<ClusterLink> {
    const l = new ClusterLink({ ...clusterSchema.parse({ redis: redis.url, node: name }), redis: redis.url }, name, log);
    await l.connect();
    links.push(l);
    return l;
  }

  it('sums every node\'s flushed counts with this node\'s unflushed ones, over the window only', async () => {
    const one = new ClusterSignals(await link('n1'), () => WINDOW);
    const two = new ClusterSignals(await link('n2'), () => WINDOW);
    const now = Date.now();
    for (let i = 0; i < 5; i++) one.note(SITE, 'a', i < 3);
    one.note('other.site', 'a', true);
    await one.flush(now);
    // Counts flushed before the window began are not summed.
    two.note(SITE, 'b', true);
    await two.flush(now - WINDOW - 2 * bucketSize(WINDOW));
    for (let i = 0; i < 2; i++) two.note(SITE, 'b', false);
    await two.flush(now);
    two.note(SITE, 'a', true);
    const sums = await two.sums(SITE, now, WINDOW);
    expect(Object.fromEntries(sums!)).toEqual({ a: { deliveries: 6, throttles: 4 }, b: { deliveries: 2, throttles: 0 } });
    // The keys carry the site's hash tag and expire.
    const keys = await redis.client().keys('ichidan:{mx:mx.test}:signals:*');
    expect(keys.length).toBeGreaterThan(0);
    expect(await redis.client().pttl(keys[0])).toBeGreaterThan(WINDOW);
  });

  it('counts wait in memory while Redis is away, and sums answer undefined', async () => {
    const l = await link('n1');
    const signals = new ClusterSignals(l, () => WINDOW);
    signals.note(SITE, 'a', true);
    await redis.kill();
    await new Promise((r) => setTimeout(r, 100));
    await signals.flush();
    expect(await signals.sums(SITE, Date.now(), WINDOW)).toBeUndefined();
    await redis.restart();
    for (let i = 0; i < 100 && !l.up; i++) await new Promise((r) => setTimeout(r, 50));
    await signals.flush();
    const other = new ClusterSignals(await link('n2'), () => WINDOW);
    expect(Object.fromEntries((await other.sums(SITE, Date.now(), WINDOW))!)).toEqual({ a: { deliveries: 1, throttles: 1 } });
  });

  async function control(name: string) {
    const dataDir = await mkdtemp(join(tmpdir(), 'ichidan-signals-'));
    const config = parseConfig({ dataDir, delivery: { throttle: { pause: '1m', maxPause: '10m', window: '10m', minSignals: 3, attributionShare: 0.6, tenantSuspension: '30m' } } } as never, 'test');
    const store = new QueueStore(join(dataDir, 'queue.db'), false);
    cleanup.push(async () => { await store.close(); await rm(dataDir, { recursive: true, force: true }); });
    const scheduler = new Scheduler({ concurrency: 10, laneConcurrency: 10 }, {
      run: () => new Promise(() => undefined),
      resolveSite: () => ({ key: SITE, limits: { maxConnections: 8, initialConnections: 8 } }),
      tenantPolicy: () => ({ weight: 1, sources: [{ address: null, helo: null }] }),
    });
    const c = new EgressControl(config, scheduler, new QueueRecords(store, log, () => ({ scans: 0, transcripts: 0 })), log);
    const signals = new ClusterSignals(await link(name), () => WINDOW);
    c.evidence = signals;
    return { control: c, signals, scheduler, settle: () => store.write([]) };
  }

  it('a node suspends the tenant that dominates the site across the cluster, though it saw little of it', async () => {
    const n1 = await control('n1');
    const n2 = await control('n2');
    const now = Date.now();
    // Node 1 carries tenant a's bulk; its throttle replies come while its pair is paused, so they only count.
    n1.control.onSignal(SITE, '10.0.0.1', 'a', throttled, now);
    for (let i = 0; i < 40; i++) n1.control.onSignal(SITE, '10.0.0.1', 'a', i % 10 === 0 ? throttled : ok, now + i);
    await n1.settle();
    await n1.signals.flush();
    // Node 2 saw one of a's deliveries and seven of b's, one throttled: alone, too few throttle replies to blame anyone.
    n2.control.onSignal(SITE, '10.0.0.2', 'a', ok, now);
    for (let i = 0; i < 6; i++) n2.control.onSignal(SITE, '10.0.0.2', 'b', ok, now);
    n2.control.onSignal(SITE, '10.0.0.2', 'b', throttled, now + 50);
    await new Promise((r) => setTimeout(r, 200));
    await n2.settle();
    const suspended = n2.control.events({ limit: 10 }).filter((e) => e.kind === 'suspended');
    expect(suspended.map((e) => e.tenant)).toEqual(['a']);
    expect(suspended[0].reason).toMatch(/of the site's (deliveries|throttle signals)/);
    expect(n2.scheduler.blocks().some((b) => b.tenant === 'a' && b.site === SITE)).toBe(true);
  });

  it('with Redis away, attribution decides on this node\'s own evidence', async () => {
    const n2 = await control('n2');
    await redis.kill();
    await new Promise((r) => setTimeout(r, 100));
    const now = Date.now();
    n2.control.onSignal(SITE, '10.0.0.2', 'a', ok, now);
    for (let i = 0; i < 6; i++) n2.control.onSignal(SITE, '10.0.0.2', 'b', i < 3 ? throttled : ok, now + i);
    await new Promise((r) => setTimeout(r, 100));
    await n2.settle();
    expect(n2.control.events({ limit: 10 }).filter((e) => e.kind === 'suspended').map((e) => e.tenant)).toEqual(['b']);
    await redis.restart();
  });
});
