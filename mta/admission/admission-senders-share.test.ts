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

  async function node(name: string, dir = mkdtempSync(join(tmpdir(), `ichidan-senders-${name}-`)), opts: { config?: typeof config; maxUnshared?: number } = {}): Promise<Node> {
    const link = new ClusterLink({ ...clusterSchema.parse({ redis: redis.url, node: name }), redis: redis.url }, name, log);
    await link.connect();
    const shareLimits = { streamLength: 10_000, maxUnshared: opts.maxUnshared ?? 100_000 };
    const senders = KnownSenders.open({ dataDir: dir, config: opts.config ?? config, trusted: () => false, link, log, shareLimits });
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

  it('a node that fell behind the trimmed stream loads everything again', async () => {
    const a = await node('a');
    const slow = parseConfig({ admission: { senders: { flushEvery: '1h', minClean: 3 } } }).admission.senders;
    const b = await node('b', undefined, { config: slow });
    await b.senders.flush();
    expect(b.senders.synced).toBe(true);
    const r = redis.client();
    for (let i = 0; i < 3; i++) a.senders.record(clean('192.0.2.7'));
    await until(() => a.senders.synced, 5000, 'a in step');
    await a.senders.flush();
    a.senders.record(clean('198.51.100.7'));
    await a.senders.flush();
    expect(await r.hlen('ichidan:senders:of:a')).toBe(2);
    // Only the last push is left in the stream: b missed the one about 192.0.2.0/24.
    await r.xtrim('ichidan:senders:changes', 'MAXLEN', 1);
    await b.senders.flush();
    await b.senders.flush();
    expect(b.senders.show({ kind: 'network', key: '198.51.100.0/24' })).toMatchObject({ clean: 1 });
    expect(b.senders.standing('192.0.2.7')).toBe('known');
  });

  it('after more changes than it keeps while Redis is away, a node writes its whole hash anew', async () => {
    const small = parseConfig({ admission: { senders: { flushEvery: '100ms', maxEntries: 10 } } }).admission.senders;
    const a = await node('a', undefined, { config: small, maxUnshared: 5 });
    const b = await node('b');
    await until(() => a.senders.synced && b.senders.synced, 5000, 'both in step');
    a.senders.record(clean('10.0.0.1'));
    await a.senders.flush();
    const r = redis.client();
    expect(await r.hkeys('ichidan:senders:of:a')).toEqual(['network|10.0.0.0/24']);
    await until(() => b.senders.show({ kind: 'network', key: '10.0.0.0/24' }) !== null, 5000, 'b has it');
    // Redis stops answering writes (the link stays up, every command times out).
    await r.client('PAUSE', 3000, 'WRITE');
    for (let i = 1; i <= 30; i++) a.senders.record(clean(`10.0.${i}.1`));
    await a.senders.flush();
    expect(a.senders.synced).toBe(false);
    await until(() => a.senders.synced, 10_000, 'a in step again');
    const want = a.senders.list({ limit: 100 }).senders.map((v) => `network|${v.key}`).sort();
    expect(want).toHaveLength(10);
    expect((await r.hkeys('ichidan:senders:of:a')).sort()).toEqual(want);
    // The other node dropped what a no longer counts, and has what it does.
    await until(() => b.senders.size === 10, 5000, 'b in step with a');
    expect(b.senders.show({ kind: 'network', key: '10.0.0.0/24' })).toBeNull();
    expect(b.senders.list({ limit: 100 }).senders.map((v) => `network|${v.key}`).sort()).toEqual(want);
  }, 20_000);

  it('goes on past malformed entries in Redis, and prunes them and the stale ones', async () => {
    const r = redis.client();
    await r.sadd('ichidan:senders:nodes', 'evil');
    await r.hset('ichidan:senders:of:evil', 'network|192.0.2.0/24', 'not json', 'nonsense', '{}', 'network|198.51.100.0/24', '{"clean":-5}');
    await r.hset('ichidan:senders:marks', 'network|192.0.2.0/24', '{"mark":{"flag":"crowned"}}', 'x', '[');
    // A node that left long ago: what it last saw is past forgetAfter (90 days), save one entry.
    const tally = (lastSeen: number) => JSON.stringify({ clean: 5, refused: 0, spam: 0, scoreSum: 0, scored: 0, at: lastSeen, firstSeen: lastSeen, lastSeen });
    await r.sadd('ichidan:senders:nodes', 'gone');
    await r.hset('ichidan:senders:of:gone', 'network|10.9.0.0/24', tally(Date.now() - 100 * 86_400_000), 'network|10.8.0.0/24', tally(Date.now() - 86_400_000));
    const a = await node('a');
    await until(() => a.senders.synced, 5000, 'a in step');
    // The unreadable and the stale are gone from Redis, and so is a node left with nothing.
    expect(await r.hlen('ichidan:senders:of:evil')).toBe(0);
    expect(await r.sismember('ichidan:senders:nodes', 'evil')).toBe(0);
    expect(await r.hkeys('ichidan:senders:of:gone')).toEqual(['network|10.8.0.0/24']);
    expect(a.senders.show({ kind: 'network', key: '10.9.0.0/24' })).toBeNull();
    expect(a.senders.show({ kind: 'network', key: '10.8.0.0/24' })).toMatchObject({ nodes: 1 });
    await r.xadd('ichidan:senders:changes', '*', 'node', 'evil', 'body', 'not json');
    await r.xadd('ichidan:senders:changes', '*', 'node', 'evil', 'body', JSON.stringify({ t: 'tallies', rows: [['network', '192.0.2.0/24', { clean: 'lots' }], ['planet', 'x', null]] }));
    await r.xadd('ichidan:senders:changes', '*', 'node', 'evil', 'body', JSON.stringify({ t: 'mark', kind: 'network', key: '192.0.2.0/24', mark: { flag: 'pinned' } }));
    await r.xadd('ichidan:senders:changes', '*', 'node', 'evil', 'body', JSON.stringify({ t: 'tallies', rows: [['network', '203.0.113.0/24', { clean: 3, refused: 0, spam: 0, scoreSum: 0, scored: 0, at: Date.now(), firstSeen: Date.now(), lastSeen: Date.now() }]] }));
    await until(() => a.senders.standing('203.0.113.9') === 'known', 5000, 'the well-formed entry applied');
    expect(a.senders.show({ kind: 'network', key: '192.0.2.0/24' })).toBeNull();
    expect(a.senders.size).toBe(2);
  });
});
