/*
 * The shared state's replication against a real redis-server: changes reach the other nodes and
 * not their author twice, a node that was away replays what it missed or reloads the whole state
 * when the stream no longer reaches back, changes made while Redis is away are published when it
 * returns, and a Redis that comes back empty is seeded by the nodes.
 */
import pino from 'pino';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { redisSupport, startRedis, type TestRedis } from '../../test/helpers/redis.js';
import { clusterSchema } from './cluster-config.js';
import { ClusterLink } from './cluster-link.js';
import { ClusterState, itemOf, type Position, type StateApplier, type StateChange, type StateCopy } from './cluster-state.js';

const log = pino({ level: 'silent' });
const support = redisSupport();

class MemoryCopy implements StateCopy {
  pos: Position | null = null;
  box: Array<{ seq: number; change: StateChange }> = [];
  #seq = 0;
  position() { return this.pos && { ...this.pos }; }
  async savePosition(p: Position) { this.pos = { ...p }; }
  outbox() { return [...this.box]; }
  async queue(change: StateChange) { this.box.push({ seq: ++this.#seq, change }); }
  async sent(seq: number) { this.box = this.box.filter((b) => b.seq !== seq); }
}

/** A node's replica of the desired state, as a map of items; counts how it was changed. */
class Replica implements StateApplier {
  items = new Map<string, StateChange>();
  applied: StateChange[] = [];
  reloads = 0;
  async apply(change: StateChange) {
    this.applied.push(change);
    this.put(change);
  }
  put(change: StateChange) {
    const { field, op } = itemOf(change);
    if (op === 'set') this.items.set(field, change);
    else this.items.delete(field);
  }
  async reload(items: StateChange[]) {
    this.reloads++;
    this.items = new Map(items.map((c) => [itemOf(c).field, c]));
  }
  inForce() { return [...this.items.values()]; }
}

interface Node { link: ClusterLink; state: ClusterState; copy: MemoryCopy; replica: Replica }

const hold = (uid: string, until: number | null = null): StateChange => ({
  type: 'event', uid, event: { at: Date.now(), kind: 'hold', actor: 'operator', tenant: 't', site: null, source: null, until, reason: 'r', detail: null, block_id: `b${uid}`, origin: 'x' },
});

async function until(check: () => boolean, ms = 3000, what = 'condition'): Promise<void> {
  const end = Date.now() + ms;
  while (!check()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

describe.skipIf(!support.ok)('cluster shared state (real Redis)', () => {
  let redis: TestRedis;
  const nodes: Node[] = [];

  beforeAll(async () => { redis = await startRedis(); });
  afterAll(async () => { await redis?.stop(); });
  afterEach(async () => {
    for (const n of nodes.splice(0)) await stop(n);
    await redis.client().flushall();
  });

  async function start(name: string, copy = new MemoryCopy(), replica = new Replica()): Promise<Node> {
    const config = { ...clusterSchema.parse({ redis: redis.url, node: name, heartbeat: '100ms' }), redis: redis.url };
    const link = new ClusterLink(config, name, log);
    await link.connect();
    const state = new ClusterState(link, copy, log);
    state.use(replica);
    state.start();
    const node = { link, state, copy, replica };
    nodes.push(node);
    await until(() => state.synced, 5000, `${name} in step`);
    return node;
  }

  async function stop(n: Node): Promise<void> {
    const i = nodes.indexOf(n);
    if (i >= 0) nodes.splice(i, 1);
    await n.state.close();
    await n.link.close();
  }

  /** What a node does with its own action: in force here, then published. */
  async function act(n: Node, change: StateChange): Promise<boolean> {
    n.replica.put(change);
    return n.state.publish(change);
  }

  it('a change reaches the other nodes within a second, and is not applied again on its author', async () => {
    const [a, b, c] = [await start('a'), await start('b'), await start('c')];
    const t0 = Date.now();
    expect(await act(a, hold('h1'))).toBe(true);
    await until(() => b.replica.items.has('event:h1') && c.replica.items.has('event:h1'), 1000, 'the hold on b and c');
    expect(Date.now() - t0).toBeLessThan(1000);
    await act(b, { type: 'undo', uid: 'h1', at: Date.now(), by: 'op' });
    await until(() => !a.replica.items.has('event:h1') && !c.replica.items.has('event:h1'), 1000, 'the undo on a and c');
    expect(a.replica.applied.map((x) => x.type)).toEqual(['undo']);
    expect(b.replica.applied.map((x) => x.type)).toEqual(['event']);
    expect(a.state.position.version).toBe(2);
    await until(() => c.state.position.version === 2, 1000, 'c at version 2');
  });

  it('a node that was away replays what it missed from its last entry', async () => {
    const a = await start('a');
    const b = await start('b');
    await act(a, hold('h1'));
    await until(() => b.replica.items.has('event:h1'));
    const copy = b.copy;
    const replica = b.replica;
    // A node's first join loads the whole state; after that it replays.
    expect(replica.reloads).toBe(1);
    await stop(b);
    await act(a, hold('h2'));
    await act(a, { type: 'engine', engine: 'clamav', off: { reason: 'broken', at: 1 } });
    await act(a, { type: 'undo', uid: 'h1', at: Date.now(), by: 'op' });
    const again = await start('b', copy, replica);
    await until(() => again.replica.items.size === 2);
    expect([...again.replica.items.keys()].sort()).toEqual(['engine:clamav', 'event:h2']);
    expect(again.replica.reloads).toBe(1);
    expect(again.replica.applied.length).toBe(4);
  });

  it('a node whose Redis link was down while changes happened replays them when it comes back', async () => {
    const a = await start('a');
    const b = await start('b');
    b.link.redis.disconnect();
    await until(() => !b.link.up && !b.state.synced, 3000, 'b cut off');
    await act(a, hold('h1'));
    await act(a, { type: 'engine', engine: 'clamav', off: { reason: 'broken', at: 1 } });
    // Meanwhile b acts on its own: in force there, shared once it is back.
    expect(await act(b, hold('hb'))).toBe(false);
    await new Promise((r) => setTimeout(r, 200));
    expect(b.replica.items.has('event:h1')).toBe(false);
    await b.link.redis.connect();
    await until(() => b.replica.items.has('event:h1') && b.replica.items.has('engine:clamav') && a.replica.items.has('event:hb'), 3000, 'both caught up');
    expect(b.replica.reloads).toBe(1);
    expect(b.state.position.version).toBe(a.state.position.version);
  });

  it('loads the whole desired state when the stream no longer reaches back to its last entry', async () => {
    const a = await start('a');
    const b = await start('b');
    await act(a, hold('h1'));
    await until(() => b.replica.items.has('event:h1'));
    const { copy, replica } = b;
    await stop(b);
    await act(a, hold('h2'));
    await act(a, { type: 'undo', uid: 'h1', at: Date.now(), by: 'op' });
    await act(a, hold('h3', Date.now() - 1));
    await redis.client().xtrim('ichidan:{state}:changes', 'MAXLEN', 0);
    const again = await start('b', copy, replica);
    expect(again.replica.reloads).toBe(2);
    // The lapsed hold is not loaded, and is removed from the desired state.
    expect([...again.replica.items.keys()]).toEqual(['event:h2']);
    expect(await redis.client().hkeys('ichidan:{state}:items')).toEqual(['event:h2']);
    expect(again.state.position.version).toBe(a.state.position.version);
    // And goes on from there.
    await act(a, hold('h4'));
    await until(() => again.replica.items.has('event:h4'));
  });

  it('a change made while Redis is away is in force at once and published when Redis returns', async () => {
    const a = await start('a');
    const b = await start('b');
    await act(a, hold('h1'));
    await until(() => b.replica.items.has('event:h1'));
    await redis.kill();
    await until(() => !a.link.up);
    expect(await act(a, hold('h2'))).toBe(false);
    expect(a.state.outboxed).toBe(1);
    expect(a.copy.box).toHaveLength(1);
    await redis.restart();
    // Redis came back empty: the nodes put what they have in force back, a's queued hold with it.
    await until(() => b.replica.items.has('event:h2') && a.state.outboxed === 0, 8000, 'the queued hold on b');
    expect(b.replica.items.has('event:h1')).toBe(true);
    expect((await redis.client().hkeys('ichidan:{state}:items')).sort()).toEqual(['event:h1', 'event:h2']);
  });

  it('a release waits for the node that acts on it (waitFor), and its answer removes the request', async () => {
    const a = await start('a');
    const b = await start('b');
    const answer = a.state.waitFor((c) => c.type === 'released' && c.message === 'Q1', 2000);
    await act(a, { type: 'release', message: 'Q1', at: Date.now(), by: 'op' });
    await until(() => b.replica.items.has('release:Q1'));
    await act(b, { type: 'released', message: 'Q1', node: 'b', recipients: 2 });
    expect(await answer).toMatchObject({ recipients: 2, node: 'b' });
    expect(await redis.client().hkeys('ichidan:{state}:items')).toEqual([]);
    expect(await a.state.waitFor(() => false, 50)).toBeUndefined();
  });
});
