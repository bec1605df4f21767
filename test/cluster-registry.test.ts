/*
 * Nodes naming the same Redis see each other: each reports itself every heartbeat, and a node that
 * stops reporting is listed as gone. Real redis-server (test/helpers/redis.ts).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { baseConfig, parseConfig, startApp, waitUntil, type TestApp } from './helpers/app.js';
import { redisSupport, startRedis, type TestRedis } from './helpers/redis.js';

const support = redisSupport();

describe.skipIf(!support.ok)('cluster registry (real Redis)', () => {
  let redis: TestRedis;
  const apps: TestApp[] = [];

  beforeAll(async () => {
    redis = await startRedis();
    for (const node of ['n1', 'n2']) {
      apps.push(await startApp((dir) => baseConfig(dir, { cluster: { redis: redis.url, node, heartbeat: '200ms', leaseTtl: '1s' } })));
    }
  });
  afterAll(async () => {
    for (const a of apps) await a.stop().catch(() => undefined);
    await redis?.stop();
  });

  it('lists every node with its listener and load, and marks one that stopped reporting as gone', async () => {
    const nodes = apps[0].app.cluster!.nodes;
    await waitUntil(async () => (await nodes.list())?.filter((n) => n.alive && n.smtp).length === 2, 5000, 'two live nodes');
    const list = (await nodes.list())!;
    expect(list.map((n) => n.node)).toEqual(['n1', 'n2']);
    expect(list[1].smtp).toEqual({ address: '127.0.0.1', port: apps[1].port('mx') });
    expect(list[0].pid).toBe(process.pid);
    await waitUntil(() => apps[0].app.cluster!.nodes.liveNodes === 2, 5000, 'the live count');
    await apps[1].stop();
    await waitUntil(async () => (await nodes.list())?.find((n) => n.node === 'n2')?.alive === false, 8000, 'n2 listed as gone');
  });

  it('reports Redis going away and coming back in its log and metrics', async () => {
    const node = apps[0];
    const metric = async (name: string) => Number(new RegExp(`^${name} (\\S+)$`, 'm').exec(await node.app.metrics.metrics())?.[1]);
    expect(await metric('ichidan_cluster_redis_up')).toBe(1);
    expect(await metric('ichidan_cluster_redis_commands_total')).toBeGreaterThan(0);
    await redis.kill('SIGKILL');
    await waitUntil(() => !node.app.cluster!.link.up, 5000, 'the link to notice');
    expect(await metric('ichidan_cluster_redis_up')).toBe(0);
    expect(node.logs.some((l) => /Redis connection lost/.test(String(l.msg)))).toBe(true);
    // What it would have asked Redis meanwhile (its heartbeat) is decided locally and counted.
    await waitUntil(async () => (await metric('ichidan_cluster_fallback_decisions_total')) > 0, 5000, 'a decision taken locally');
    await redis.restart();
    await waitUntil(() => node.app.cluster!.link.up, 10_000, 'the link to come back');
    expect(await metric('ichidan_cluster_redis_up')).toBe(1);
    // It reports itself again to the Redis that came back empty.
    await waitUntil(async () => (await redis.client().hexists('ichidan:nodes', 'n1')) === 1, 5000, 'n1 in the registry again');
  });

  it('refuses more than one worker without Redis, naming the key', () => {
    expect(() => parseConfig(baseConfig('/tmp/x', { cluster: { workers: 2 } }), 'test')).toThrow(/cluster\.workers.*cluster\.redis/s);
    expect(() => parseConfig(baseConfig('/tmp/x', { cluster: { redis: 'http://x' } }), 'test')).toThrow(/cluster\.redis.*Redis URL/s);
  });
});
