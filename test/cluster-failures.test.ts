// Bad days in a cluster of three nodes sharing a real Postfix MX capped at 10 connections per client
// address: Redis killed under load and restarted, and a node killed under load and restarted.
// Nothing a node acknowledged is lost, no submission fails because of Redis, the cap holds on the
// local fallback, and the shared state comes back.
//
// Real redis-server, real Postfix, nodes as real processes (test/helpers/cluster-world.ts).
import { afterEach, describe, expect, it } from 'vitest';
import { Submitter } from '../bench/bench-submit.js';
import { sampleConnections } from '../bench/bench-proc.js';
import { postfixSupport } from './helpers/capped-mx.js';
import { CAP, MX, startClusterWorld, TENANTS, type ClusterWorld } from './helpers/cluster-world.js';
import { redisSupport } from './helpers/redis.js';

const postfix = postfixSupport();
if (!postfix.ok && process.env.CI) throw new Error(`the cluster scenarios need a real Postfix under CI: ${postfix.reason}`);
const redis = redisSupport();
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Each tenant submits `per` messages to each node; recipients name tenant and a number unique in the run. */
function load(world: ClusterWorld, per: number): Array<{ node: number; s: Submitter }> {
  const out: Array<{ node: number; s: Submitter }> = [];
  world.nodes.forEach((child, n) => {
    for (const [tenant, address] of Object.entries(TENANTS)) {
      const s = new Submitter(tenant, address, child!.ports.mx, 2, 2048);
      s.submit(Array.from({ length: per }, (_, i) => ({ seq: n * per + i + 1, to: `${tenant}${n * per + i + 1}@capped.example` })));
      out.push({ node: n, s });
    }
  });
  return out;
}

/** Every acknowledged message, as the MX names its recipient. */
function acknowledged(subs: Array<{ s: Submitter }>): Set<string> {
  const acked = new Set<string>();
  for (const { s } of subs) for (const seq of s.accepted.keys()) acked.add(`${s.tenant}${seq}`);
  return acked;
}

async function waitArrived(world: ClusterWorld, want: Set<string>, ms: number): Promise<Set<string>> {
  const until = Date.now() + ms;
  let arrived = new Set((await world.tally()).arrivals);
  while ([...want].some((r) => !arrived.has(r)) && Date.now() < until) {
    await sleep(250);
    arrived = new Set((await world.tally()).arrivals);
  }
  return arrived;
}

describe.skipIf(!postfix.ok || !redis.ok)('a cluster on bad days', () => {
  let world: ClusterWorld | null = null;
  afterEach(async () => {
    await world?.stop();
    world = null;
  });

  it('Redis killed under load and restarted: no failed submission, the cap held on the local fallback, leases re-asserted, nothing lost', async () => {
    world = await startClusterWorld({ nodes: 3 });
    await Promise.all([0, 1, 2].map((i) => world!.node(i)));
    // Our connections, as the nodes hold them; the MX's own count shows in its refusals.
    const sampler = sampleConnections(MX, world.mx.port, 10, 'client');
    const subs = load(world, 150);
    await sleep(1500);
    await world.redis.kill('SIGKILL');
    await sleep(3000);
    await world.redis.restart();
    await Promise.all(subs.map(({ s }) => s.drain(60_000)));
    await Promise.all(subs.map(({ s }) => s.stop()));
    const acked = acknowledged(subs);
    const arrived = await waitArrived(world, acked, 60_000);
    const sampledPeak = sampler.stop();
    // anvil (which counts connections per client for the MX's cap) writes its statistics once a second.
    await sleep(1500);
    const tally = await world.tally();
    const peak = tally.mxPeak;
    console.log(`redis killed: ${acked.size} acknowledged, ${[...acked].filter((r) => arrived.has(r)).length} arrived; peak ${peak} at the MX by its own count (${sampledPeak} sampled at the nodes); ${tally.refused} refused; ${tally.arrivals.length - arrived.size} duplicates`);
    expect(subs.reduce((n, { s }) => n + s.failed, 0)).toBe(0);
    expect(acked.size).toBe(150 * 9);
    expect([...acked].filter((r) => !arrived.has(r))).toEqual([]);
    expect(peak).toBeLessThanOrEqual(CAP);
    expect(tally.refused).toBe(0);
    // The nodes are back in Redis: each reports itself again.
    const client = world.redis.client();
    const until = Date.now() + 5000;
    while ((await client.hlen('ichidan:nodes')) < 3 && Date.now() < until) await sleep(100);
    expect(await client.hlen('ichidan:nodes')).toBe(3);
  }, 180_000);

  it('a node killed under load: its leases return to the others within their expiry, and after its restart its queue is delivered', async () => {
    world = await startClusterWorld({ nodes: 3, leaseTtl: '2s' });
    await Promise.all([0, 1, 2].map((i) => world!.node(i)));
    const client = world.redis.client();
    const subs = load(world, 150);
    const held = async () => Object.entries(await client.hgetall('ichidan:{route:127.0.0.134:' + world!.mx.port + '}:leases:held'));
    // node1 takes part before it dies.
    const until = Date.now() + 10_000;
    while (!(await held()).some(([f, n]) => f.endsWith('|node1') && Number(n) > 0) && Date.now() < until) await sleep(50);
    expect((await held()).some(([f]) => f.endsWith('|node1'))).toBe(true);
    await world.kill(0, 'SIGKILL');
    const killedAt = Date.now();
    // More mail for the two left than the cap can carry at once.
    const burst = [1, 2].flatMap((n) => Object.entries(TENANTS).map(([tenant, address]) => {
      const s = new Submitter(tenant, address, world!.nodes[n]!.ports.mx, 2, 2048);
      s.submit(Array.from({ length: 200 }, (_, i) => ({ seq: 10_000 + n * 200 + i, to: `${tenant}${10_000 + n * 200 + i}@capped.example` })));
      return { node: n, s };
    }));
    subs.push(...burst);
    // Its leases lapse (2 s) and the others take the whole cap.
    let others = 0;
    while (Date.now() - killedAt < 8000) {
      const rows = await held();
      others = rows.filter(([f]) => !f.endsWith('|node1')).reduce((s, [, n]) => s + Number(n), 0);
      if (!rows.some(([f]) => f.endsWith('|node1')) && others >= CAP - 1) break;
      await sleep(100);
    }
    const returnedMs = Date.now() - killedAt;
    console.log(`node killed: its leases returned after ${returnedMs} ms; the others hold ${others}`);
    expect((await held()).some(([f]) => f.endsWith('|node1'))).toBe(false);
    expect(returnedMs).toBeLessThan(6000);
    expect(others).toBeGreaterThanOrEqual(CAP - 1);
    await Promise.all(subs.filter(({ node }) => node !== 0).map(({ s }) => s.drain(60_000)));
    await Promise.all(subs.map(({ s }) => s.stop()));
    await world.node(0);
    const acked = acknowledged(subs);
    const arrived = await waitArrived(world, acked, 60_000);
    console.log(`node killed: ${acked.size} acknowledged, ${[...acked].filter((r) => arrived.has(r)).length} arrived`);
    expect([...acked].filter((r) => !arrived.has(r))).toEqual([]);
    expect((await world.tally()).refused).toBe(0);
  }, 180_000);
});
