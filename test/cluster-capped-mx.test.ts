// Three nodes, three tenants, one real Postfix MX capped at 10 connections per client address, all
// nodes delivering from the same address: the cap holds cluster-wide through the leases in Redis
// (never more than 10 at the MX, no connection refused), the tenants share it evenly, connections
// carry more than one message, and every message arrives once.
//
// Real redis-server, real Postfix, nodes as real processes (test/helpers/cluster-world.ts). Needs
// root and Debian's postfix and redis-server; with CI set, a missing one is an error, never a skip.
import { afterAll, describe, expect, it } from 'vitest';
import { Submitter } from '../bench/bench-submit.js';
import { sampleConnections } from '../bench/bench-proc.js';
import { postfixSupport } from './helpers/capped-mx.js';
import { CAP, jain, MX, startClusterWorld, TENANTS, type ClusterWorld } from './helpers/cluster-world.js';
import { redisSupport } from './helpers/redis.js';

const postfix = postfixSupport();
if (!postfix.ok && process.env.CI) throw new Error(`the cluster scenarios need a real Postfix under CI: ${postfix.reason}`);
const redis = redisSupport();
const PER_NODE_PER_TENANT = 120;

describe.skipIf(!postfix.ok || !redis.ok)('three nodes sharing one capped MX through Redis', () => {
  let world: ClusterWorld | null = null;
  afterAll(async () => { await world?.stop(); });

  it(`holds ${CAP} connections across the nodes, refuses none, shares fairly and loses nothing`, async () => {
    world = await startClusterWorld({ nodes: 3 });
    const nodes = await Promise.all([0, 1, 2].map((i) => world!.node(i)));
    const sampler = sampleConnections(MX, world.mx.port, 10);
    const submitters: Submitter[] = [];
    nodes.forEach((node, n) => {
      for (const [tenant, address] of Object.entries(TENANTS)) {
        const s = new Submitter(tenant, address, node.ports.mx, 2, 2048);
        s.submit(Array.from({ length: PER_NODE_PER_TENANT }, (_, i) => {
          const seq = n * PER_NODE_PER_TENANT + i + 1;
          return { seq, to: `${tenant}${seq}@capped.example` };
        }));
        submitters.push(s);
      }
    });
    const total = PER_NODE_PER_TENANT * 3 * 3;
    const until = Date.now() + 120_000;
    let tally = await world.tally();
    while (tally.arrivals.length < total && Date.now() < until) {
      await new Promise((r) => setTimeout(r, 250));
      tally = await world.tally();
    }
    const peak = sampler.stop();
    await Promise.all(submitters.map((s) => s.stop()));
    // Fairness while every tenant had mail waiting: the shares up to when the first tenant was done.
    const perTenant = total / 3;
    const counts: Record<string, number> = { a: 0, b: 0, c: 0 };
    for (const r of tally.arrivals) {
      counts[r[0]]++;
      if (counts[r[0]] === perTenant) break;
    }
    const index = jain(Object.values(counts));
    const perConnection = tally.arrivals.length / Math.max(1, tally.connections);
    console.log(`cluster capped MX: ${tally.arrivals.length}/${total} arrived; peak ${peak} at the MX (cap ${CAP}); ${tally.refused} refused; `
      + `shares ${JSON.stringify(counts)} jain ${index.toFixed(4)}; ${perConnection.toFixed(1)} messages per connection`);
    expect(submitters.reduce((n, s) => n + s.failed, 0)).toBe(0);
    expect(new Set(tally.arrivals).size).toBe(total);
    expect(tally.arrivals.length).toBe(total);
    expect(tally.refused).toBe(0);
    expect(peak).toBeLessThanOrEqual(CAP);
    expect(peak).toBeGreaterThanOrEqual(CAP - 2);
    expect(index).toBeGreaterThanOrEqual(0.99);
    expect(perConnection).toBeGreaterThan(1);
  }, 180_000);
});
