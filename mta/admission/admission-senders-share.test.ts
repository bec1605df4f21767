/*
 * Known senders shared through a real redis-server by two nodes: what one learns the other knows,
 * counted once; a pin, a block and a forget on one reach the other; with Redis gone both go on
 * from their own SQLite, and catch up (the restarted Redis empty) once it is back.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { redisSupport, startRedis, type TestRedis } from '../../test/helpers/redis.js';
import { clusterSchema } from '../../queue/cluster/cluster-config.js';
import { ClusterLink } from '../../queue/cluster/cluster-link.js';
import { parseConfig } from '../mta-config.js';
import { KnownSenders, type SenderEvent } from './admission-senders.js';

const log = pino({ level: process.env.DEBUG_LOG ? 'debug' : 'silent' });
const support = redisSupport();
const config = parseConfig({ admission: { senders: { flushEvery: '100ms', minClean: 3 } } }).admission.senders;
const clean = (address: string): SenderEvent => ({ address, authUser: null, domain: null, outcome: 'clean', score: null });
const NET = { kind: 'network', key: '192.0.2.0/24' } as const;

async function until(check: () => boolean, ms = 5000, what = 'condition'): Promise<void> {
  const end = Date.now() + ms;
  while (!check()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

interface Node { name: string; dir: string; link: ClusterLink; senders: KnownSenders }

describe.skipIf(!support.ok)('known senders across a cluster (real Redis)', () => {
  let redis: TestRedis;
  const nodes: Node[] = [];

  async function node(name: string, dir = mkdtempSync(join(tmpdir(), `ichidan-senders-${name}-`))): Promise<Node> {
    const link = new ClusterLink({ ...clusterSchema.parse({ redis: redis.url, node: name }), redis: redis.url }, name, log);
    await link.connect();
    const senders = KnownSenders.open({ dataDir: dir, config, trusted: () => false, link, log });
    const n = { name, dir, link, senders };
    nodes.push(n);
    return n;
  }

  async function stop(n: Node): Promise<void> {
    await n.senders.close();
    await n.link.close();
    nodes.splice(nodes.indexOf(n), 1);
  }

  beforeAll(async () => { redis = await startRedis(); });
  afterAll(async () => { await redis?.stop(); });
  afterEach(async () => {
    for (const n of [...nodes]) {
      await stop(n);
      rmSync(n.dir, { recursive: true, force: true });
    }
    await redis.client().flushall();
  });

  it('what one node learns the other knows, each message counted once', async () => {
    const a = await node('a');
    const b = await node('b');
    await until(() => a.senders.synced && b.senders.synced, 5000, 'both in step');
    a.senders.record(clean('192.0.2.7'));
    a.senders.record(clean('192.0.2.8'));
    b.senders.record(clean('192.0.2.9'));
    expect(a.senders.standing('192.0.2.1')).toBe('unknown');
    await until(() => b.senders.standing('192.0.2.1') === 'known' && a.senders.standing('192.0.2.1') === 'known', 5000, 'known on both');
    // Several flushes later the counts are still 3: pushes replace a node's tally, they do not add to it.
    await new Promise((r) => setTimeout(r, 500));
    expect(a.senders.show(NET)).toMatchObject({ clean: 3, nodes: 2 });
    expect(b.senders.show(NET)).toMatchObject({ clean: 3, nodes: 2 });
  });

  it('a pin, a block and a forget on one node reach the other', async () => {
    const a = await node('a');
    const b = await node('b');
    await until(() => a.senders.synced && b.senders.synced, 5000, 'both in step');
    expect(await a.senders.mark({ kind: 'domain', key: 'example.com' }, 'pinned', 'partner', 'op')).toMatchObject({ shared: true });
    await until(() => b.senders.standingOf('domain', 'example.com') === 'pinned', 5000, 'pinned on b');
    expect(b.senders.show({ kind: 'domain', key: 'example.com' })?.mark).toMatchObject({ flag: 'pinned', note: 'partner', by: 'op' });
    for (let i = 0; i < 3; i++) b.senders.record(clean('192.0.2.7'));
    await until(() => a.senders.standing('192.0.2.7') === 'known', 5000, 'known on a');
    await b.senders.mark(NET, 'blocked', null, 'op');
    await until(() => a.senders.standing('192.0.2.7') === 'blocked', 5000, 'blocked on a');
    await a.senders.forget(NET, 'op');
    await until(() => b.senders.show(NET) === null, 5000, 'forgotten on b');
    expect(b.senders.standing('192.0.2.7')).toBe('unknown');
    // It stays forgotten: neither node's old count comes back from Redis.
    await new Promise((r) => setTimeout(r, 500));
    expect(a.senders.show(NET)).toBeNull();
    expect(b.senders.show(NET)).toBeNull();
  });

  it('without Redis both go on from their own SQLite, and catch up when it is back (empty)', async () => {
    const a = await node('a');
    const b = await node('b');
    await until(() => a.senders.synced && b.senders.synced, 5000, 'both in step');
    for (let i = 0; i < 3; i++) a.senders.record(clean('192.0.2.7'));
    await until(() => b.senders.standing('192.0.2.7') === 'known', 5000, 'known on b');

    await redis.kill();
    await until(() => !a.link.up && !b.link.up, 5000, 'Redis seen gone');
    // Each goes on with what it had and learns alone.
    expect(b.senders.standing('192.0.2.7')).toBe('known');
    for (let i = 0; i < 3; i++) b.senders.record(clean('198.51.100.7'));
    expect(b.senders.standing('198.51.100.7')).toBe('known');
    expect(a.senders.standing('198.51.100.7')).toBe('unknown');
    expect(await a.senders.mark({ kind: 'user', key: 'alice' }, 'blocked', null, 'op')).toMatchObject({ shared: false });
    // A node restarted meanwhile still has what the other had shared (kept in its SQLite).
    const bDir = b.dir;
    await stop(b);
    const b2 = await node('b', bDir);
    expect(b2.senders.standing('192.0.2.7')).toBe('known');
    expect(b2.senders.standing('198.51.100.7')).toBe('known');

    await redis.restart();
    await until(() => a.senders.standing('198.51.100.7') === 'known', 10_000, 'a learns what b learned while Redis was away');
    await until(() => b2.senders.standingOf('user', 'alice') === 'blocked', 10_000, 'b gets the block made while Redis was away');
    await new Promise((r) => setTimeout(r, 500));
    expect(a.senders.show(NET)).toMatchObject({ clean: 3, nodes: 1 });
    expect(b2.senders.show(NET)).toMatchObject({ clean: 3, nodes: 1 });
    expect(a.senders.show({ kind: 'network', key: '198.51.100.0/24' })).toMatchObject({ clean: 3, nodes: 1 });
    // And Redis holds the state again: a third node that joins now learns it all.
    const c = await node('c');
    await until(() => c.senders.synced, 5000, 'c in step');
    expect(c.senders.standing('192.0.2.7')).toBe('known');
    expect(c.senders.standing('198.51.100.7')).toBe('known');
    expect(c.senders.standingOf('user', 'alice')).toBe('blocked');
  }, 40_000);
});
