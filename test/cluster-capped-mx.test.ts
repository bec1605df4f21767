// Three nodes, three tenants, one real Postfix MX capped at 10 connections per client address, all
// nodes delivering from the same address: the cap holds cluster-wide through the leases in Redis
// (never more than 10 at the MX, no connection refused), the tenants share it evenly, connections
// carry more than one message, and every message arrives once.
//
// Real redis-server, real Postfix, nodes as real processes (test/helpers/cluster-world.ts). Needs
// root and Debian's postfix and redis-server; with CI set, a missing one is an error, never a skip.
import { describe, expect, it } from 'vitest';
import { postfixSupport } from './helpers/capped-mx.js';
import { CAP, runCappedCluster } from './helpers/cluster-world.js';
import { redisSupport } from './helpers/redis.js';

const postfix = postfixSupport();
if (!postfix.ok && process.env.CI) throw new Error(`the cluster scenarios need a real Postfix under CI: ${postfix.reason}`);
const redis = redisSupport();
const PER_NODE_PER_TENANT = 250;

describe.skipIf(!postfix.ok || !redis.ok)('three nodes sharing one capped MX through Redis', () => {
  it(`holds ${CAP} connections across the nodes, refuses none, shares fairly and loses nothing`, async () => {
    const run = await runCappedCluster(PER_NODE_PER_TENANT, 120_000);
    console.log(`cluster capped MX: ${run.arrived}/${run.total} arrived in ${run.ms} ms; peak ${run.peak} at the MX by its own count (cap ${CAP}; ${run.sampledPeak} sampled at the nodes); ${run.refused} refused; `
      + `shares ${JSON.stringify(run.shares)} jain ${run.jain.toFixed(4)}; ${run.perConnection.toFixed(1)} messages per connection; `
      + `${(run.redisCommands / run.arrived).toFixed(3)} Redis commands per message`);
    expect(run.submitFailures).toBe(0);
    expect(run.unique).toBe(run.total);
    expect(run.arrived).toBe(run.total);
    expect(run.refused).toBe(0);
    expect(run.peak).toBeLessThanOrEqual(CAP);
    expect(run.peak).toBeGreaterThanOrEqual(CAP - 2);
    expect(run.jain).toBeGreaterThanOrEqual(0.99);
    expect(run.perConnection).toBeGreaterThan(1);
  }, 240_000);
});
