import { it } from 'vitest';
import { Submitter } from '../bench/bench-submit.js';
import { startClusterWorld, TENANTS } from './helpers/cluster-world.js';
it('fair', async () => {
  for (let round = 0; round < 3; round++) {
    const world = await startClusterWorld({ nodes: 3, suspended: true });
    const nodes = await Promise.all([0, 1, 2].map((i) => world.node(i)));
    const subs = nodes.flatMap((node, n) => Object.entries(TENANTS).map(([tenant, address]) => { const s = new Submitter(tenant, address, node.ports.mx, 2, 2048); s.submit(Array.from({ length: 250 }, (_, i) => ({ seq: n * 250 + i + 1, to: `${tenant}${n * 250 + i + 1}@capped.example` }))); return s; }));
    await Promise.all(subs.map((s) => s.drain(60_000)));
    const rc = world.redis.client();
    const key = `ichidan:{route:127.0.0.134:${world.mx.port}}:leases:held`;
    const sums: Record<string, number> = {}; let k = 0;
    const perNode: Record<string, number> = {};
    const st = setInterval(async () => {
      const h = await rc.hgetall(key); k++;
      for (const [f, v] of Object.entries(h)) { const [, t, n] = f.split('|'); sums[t] = (sums[t] ?? 0) + Number(v); perNode[`${t}@${n}`] = (perNode[`${t}@${n}`] ?? 0) + Number(v); }
    }, 50);
    await world.resume();
    const until = Date.now() + 60_000;
    let tally = await world.tally();
    const counts: Record<string, number> = { a: 0, b: 0, c: 0 };
    while (Date.now() < until) { tally = await world.tally(); const c = { a: 0, b: 0, c: 0 } as Record<string, number>; for (const r of tally.arrivals) c[r[0]]++; if (Math.max(...Object.values(c)) >= 750) { Object.assign(counts, c); break; } await new Promise((r) => setTimeout(r, 100)); }
    clearInterval(st);
    console.log('ROUND', JSON.stringify(counts), 'avg leases', JSON.stringify(Object.fromEntries(Object.entries(sums).map(([t, v]) => [t, (v / k).toFixed(2)]))), 'per node', JSON.stringify(Object.fromEntries(Object.entries(perNode).sort().map(([t, v]) => [t, (v / k).toFixed(2)]))));
    await Promise.all(subs.map((s) => s.stop()));
    await world.stop();
  }
}, 300_000);
