/*
 * The shared gate against a real Redis: leases per (site, source, tenant) capped cluster-wide and
 * shared by weight, a dead node's leases returning, shared rates, and the local fallback.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import pino from 'pino';
import { setTimeout as sleep } from 'node:timers/promises';
import { redisSupport, startRedis, type TestRedis } from '../../test/helpers/redis.js';
import { clusterSchema } from './cluster-config.js';
import { ClusterGate } from './cluster-gate.js';
import { ClusterLink } from './cluster-link.js';

const support = redisSupport();
const log = pino({ level: 'silent' });

interface Node {
  link: ClusterLink;
  gate: ClusterGate;
  /** Deliveries this node runs, per tenant. */
  running: Map<string, number>;
  demand: Map<string, number>;
}

describe.skipIf(!support.ok)('cluster gate (real Redis)', () => {
  let redis: TestRedis;
  const nodes: Node[] = [];

  beforeAll(async () => {
    redis = await startRedis();
  });
  afterAll(async () => {
    for (const n of nodes) {
      await n.gate.close().catch(() => undefined);
      await n.link.close();
    }
    await redis?.stop();
  });

  async function node(name: string, prefix: string, opts: { fallbackNodes?: number } = {}): Promise<Node> {
    const config = clusterSchema.parse({ redis: redis.url, node: name, prefix, leaseTtl: '300ms', heartbeat: '100ms', ...opts }) as ReturnType<typeof clusterSchema.parse> & { redis: string };
    const link = new ClusterLink(config, name, log);
    await link.connect();
    const n: Node = { link, gate: null as unknown as ClusterGate, running: new Map(), demand: new Map() };
    n.gate = new ClusterGate(link, { trim: async () => undefined, open: () => 0, nodes: () => 3, wake: () => pump(n) }, log);
    n.gate.start();
    nodes.push(n);
    return n;
  }

  /** Starts what the gate allows of the node's demand (as the scheduler would). */
  function pump(n: Node): void {
    for (const [tenant, want] of n.demand) {
      while ((n.running.get(tenant) ?? 0) < want && n.gate.may('mx:capped', '127.0.0.9', tenant, 1, 10)) {
        n.gate.started('mx:capped', '127.0.0.9', tenant);
        n.running.set(tenant, (n.running.get(tenant) ?? 0) + 1);
      }
    }
  }

  function finishAll(n: Node): void {
    for (const [tenant, k] of n.running) for (let i = 0; i < k; i++) n.gate.finished('mx:capped', '127.0.0.9', tenant);
    n.running.clear();
    n.demand.clear();
  }

  const total = (list: Node[]) => list.reduce((s, n) => s + [...n.running.values()].reduce((a, b) => a + b, 0), 0);

  it('holds a pair to its cap across nodes and shares it by tenant; a lone tenant may use it all', async () => {
    const [a, b, c] = await Promise.all([node('a', 't1'), node('b', 't1'), node('c', 't1')]);
    a.demand.set('alpha', 20);
    pump(a);
    await sleep(600);
    pump(a);
    expect(total([a])).toBe(10);
    b.demand.set('beta', 20);
    c.demand.set('gamma', 20);
    for (let i = 0; i < 20; i++) {
      pump(a); pump(b); pump(c);
      // alpha's deliveries end one by one; what the fair share took back is not started again.
      if (a.running.get('alpha')! > 0 && i % 2 === 0) {
        a.gate.finished('mx:capped', '127.0.0.9', 'alpha');
        a.running.set('alpha', a.running.get('alpha')! - 1);
      }
      expect(total([a, b, c])).toBeLessThanOrEqual(10);
      await sleep(150);
    }
    const counts = [a.running.get('alpha') ?? 0, b.running.get('beta') ?? 0, c.running.get('gamma') ?? 0];
    expect(counts.reduce((x, y) => x + y)).toBeGreaterThanOrEqual(9);
    for (const k of counts) expect(k).toBeGreaterThanOrEqual(3);
    const held = await redis.client().hgetall('t1:{mx:capped}:leases:held');
    expect(Object.values(held).reduce((s, v) => s + Number(v), 0)).toBeLessThanOrEqual(10);
    for (const n of [a, b, c]) finishAll(n);
  });

  it('gives a dead node\'s leases to the others within the lease time', async () => {
    const [a, b] = await Promise.all([node('a', 't2'), node('b', 't2')]);
    a.demand.set('alpha', 10);
    for (let i = 0; i < 15; i++) { pump(a); await sleep(20); }
    expect(total([a])).toBe(10);
    // a dies without a word: its link is cut and its heartbeat stops.
    a.link.redis.disconnect();
    await sleep(20);
    await a.gate.close();
    b.demand.set('beta', 10);
    pump(b);
    expect(total([b])).toBe(0);
    const t0 = Date.now();
    while (total([b]) < 10 && Date.now() - t0 < 5000) { pump(b); await sleep(50); }
    expect(total([b])).toBe(10);
    // Not before a's leases lapsed (leaseTtl 300 ms), and soon after.
    expect(Date.now() - t0).toBeGreaterThan(200);
    expect(Date.now() - t0).toBeLessThan(3000);
    finishAll(b);
  });

  it('shares a message rate between nodes', async () => {
    const [a, b] = await Promise.all([node('a', 't3'), node('b', 't3')]);
    const rate = { count: 20, perMs: 1000 };
    let taken = 0;
    const t0 = Date.now();
    while (Date.now() - t0 < 2000) {
      for (const n of [a, b]) while (n.gate.rate('tenant\u0000alpha', rate)) taken++;
      await sleep(10);
    }
    // A burst of one rate's worth, then 20 a second, across both nodes together.
    expect(taken).toBeGreaterThanOrEqual(40);
    expect(taken).toBeLessThanOrEqual(62);
  });

  it('starts nothing new on its leases once Redis has not confirmed them for half a lease time', async () => {
    const a = await node('a', 't5');
    a.demand.set('alpha', 2);
    for (let i = 0; i < 10 && total([a]) < 2; i++) { pump(a); await sleep(20); }
    expect(total([a])).toBe(2);
    // One delivery ends: the lease it used is still held, and would be used again at once ...
    a.gate.finished('mx:capped', '127.0.0.9', 'alpha');
    a.running.set('alpha', 1);
    a.demand.set('alpha', 1);
    expect(a.gate.may('mx:capped', '127.0.0.9', 'alpha', 1, 10)).toBe(true);
    // ... but not while Redis does not answer (stopped, the connection still up) for more than half of leaseTtl.
    process.kill(redis.pid, 'SIGSTOP');
    try {
      await sleep(350);
      expect(a.link.up).toBe(true);
      expect(a.gate.may('mx:capped', '127.0.0.9', 'alpha', 1, 10)).toBe(false);
    } finally {
      process.kill(redis.pid, 'SIGCONT');
    }
    await sleep(400);
    expect(a.gate.may('mx:capped', '127.0.0.9', 'alpha', 1, 10)).toBe(true);
    finishAll(a);
  });

  it('falls back to an equal part of the cap while Redis is away', async () => {
    const a = await node('a', 't4', { fallbackNodes: 3 });
    a.demand.set('alpha', 2);
    for (let i = 0; i < 10 && total([a]) < 2; i++) { pump(a); await sleep(20); }
    expect(total([a])).toBe(2);
    a.link.redis.disconnect();
    await sleep(50);
    expect(a.gate.shared).toBe(false);
    // For one lease time (300 ms) it keeps within the 2 it had when Redis was lost ...
    a.demand.set('alpha', 10);
    pump(a);
    expect(total([a])).toBe(2);
    // ... then takes its part of the cap: 10 / 3 nodes.
    await sleep(350);
    pump(a);
    expect(total([a])).toBe(3);
    finishAll(a);
  });
});
