/*
 * The egress control's events shared between two nodes' controls, each with its own queue
 * database, through a real redis-server: holds, pauses and undos by cluster-wide uid; after a gap
 * the whole desired state is loaded and what is no longer in force there is lifted; events made
 * outside a cluster stay the node's own.
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
import { EgressShare } from './cluster-egress.js';
import { ClusterLink } from './cluster-link.js';
import { SqliteStateCopy } from './cluster-state-sql.js';
import { ClusterState, type StateApplier } from './cluster-state.js';

const log = pino({ level: 'silent' });
const support = redisSupport();
const SITE = 'mx:mx.test';
const throttled = { kind: 'throttled' as const, detail: '421 4.7.0 too many connections' };

interface Node { name: string; dataDir: string; store: QueueStore; scheduler: Scheduler; control: EgressControl; link?: ClusterLink; state?: ClusterState }

async function until(check: () => boolean, ms = 3000, what = 'condition'): Promise<void> {
  const end = Date.now() + ms;
  while (!check()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

describe.skipIf(!support.ok)('egress events shared between nodes (real Redis)', () => {
  let redis: TestRedis;
  const open: Node[] = [];
  const dirs: string[] = [];

  beforeAll(async () => { redis = await startRedis(); });
  afterAll(async () => {
    await redis?.stop();
    for (const d of dirs) await rm(d, { recursive: true, force: true });
  });
  afterEach(async () => {
    for (const n of open.splice(0)) await stop(n);
    await redis.client().flushall();
  });

  /**
   * A node's queue database and control; joined to the cluster unless `alone`. `first` is an applier
   * of the shared state that runs before the node's egress share (to act while it syncs).
   */
  async function node(name: string, dataDir?: string, alone = false, first?: (control: EgressControl) => StateApplier): Promise<Node> {
    const dir = dataDir ?? await mkdtemp(join(tmpdir(), `ichidan-share-${name}-`));
    if (!dataDir) dirs.push(dir);
    const config = parseConfig({ dataDir: dir, delivery: { throttle: { pause: '1m', maxPause: '10m', window: '10m' } } } as never, 'test');
    const store = new QueueStore(join(dir, 'queue.db'), false);
    const scheduler = new Scheduler({ concurrency: 10, laneConcurrency: 10 }, {
      run: () => new Promise(() => undefined),
      resolveSite: () => ({ key: SITE, limits: { maxConnections: 8, initialConnections: 8 } }),
      tenantPolicy: () => ({ weight: 1, sources: [{ address: null, helo: null }] }),
    });
    scheduler.add({ messageId: 'm', tenant: 'x', domain: 'mx.test', recipientIds: [0], due: 0 });
    const control = new EgressControl(config, scheduler, new QueueRecords(store, log, () => ({ scans: 0, transcripts: 0 })), log);
    control.restore();
    const n: Node = { name, dataDir: dir, store, scheduler, control };
    open.push(n);
    if (alone) return n;
    n.link = new ClusterLink({ ...clusterSchema.parse({ redis: redis.url, node: name }), redis: redis.url }, name, log);
    await n.link.connect();
    n.state = new ClusterState(n.link, new SqliteStateCopy(store), log);
    const share = new EgressShare(n.state, control);
    if (first) n.state.use(first(control));
    n.state.use(share);
    control.sharing = share;
    n.state.start();
    await until(() => n.state!.synced, 5000, `${name} in step`);
    return n;
  }

  async function stop(n: Node): Promise<void> {
    const i = open.indexOf(n);
    if (i >= 0) open.splice(i, 1);
    await n.state?.close();
    await n.link?.close();
    await n.store.close();
  }

  const tenantBlocks = (n: Node) => n.scheduler.blocks().filter((b) => b.source === undefined).map((b) => `${b.tenant ?? '*'}@${b.site ?? '*'}`).sort();

  it('a hold, a pause and an undo by this node\'s own id reach the other node; the pause counts in its memory of the pair', async () => {
    const a = await node('a');
    const b = await node('b');
    const id = await a.control.hold({ tenant: 't1', reason: 'billing' });
    await until(() => tenantBlocks(b).includes('t1@*'));
    a.control.onSignal(SITE, null, 'x', throttled);
    await until(() => b.scheduler.blocks().some((x) => x.site === SITE && x.source === ''), 3000, 'the pause on b');
    // b's window for the pair is its own: a pause from elsewhere blocks it without halving it.
    expect(b.scheduler.window(SITE, null)).toBe(8);
    // Paused already: b's own throttle reply for the pair only counts (no second pause, no second event).
    b.control.onSignal(SITE, null, 'x', throttled);
    await b.store.write([]);
    expect(b.control.events({ limit: 10 }).filter((e) => e.kind === 'paused')).toHaveLength(1);
    // Undone on b by b's id for a's hold.
    const onB = b.control.events({ limit: 10 }).find((e) => e.kind === 'hold')!;
    expect(onB.id).not.toBe(0);
    expect(await b.control.undo(onB.id, 'ops')).not.toBeNull();
    await until(() => !tenantBlocks(a).includes('t1@*'), 3000, 'the undo on a');
    expect(a.control.event(id)).toMatchObject({ undone_by: 'ops' });
  });

  it('after a gap the whole state is loaded: missing events adopted, ones no longer in force lifted', async () => {
    const a = await node('a');
    let b = await node('b');
    await a.control.hold({ tenant: 't1', reason: 'one' });
    const two = await a.control.hold({ tenant: 't2', reason: 'two' });
    await until(() => tenantBlocks(b).length === 2);
    const dir = b.dataDir;
    await stop(b);
    await a.control.undo(two, 'ops');
    await a.control.hold({ site: 'mx:other.test', reason: 'three' });
    await redis.client().xtrim('ichidan:{state}:changes', 'MAXLEN', 0);
    b = await node('b', dir);
    // Restored from its own database first (t1, t2), then brought in line with the cluster.
    expect(b.state!.reloads).toBe(1);
    expect(tenantBlocks(b)).toEqual(['*@mx:other.test', 't1@*']);
    expect(b.control.events({ limit: 10, open: true }).map((e) => e.reason).sort()).toEqual(['one', 'three']);
  });

  it('a hold made while the node loads the shared state is kept and shared, not lifted as gone elsewhere, and its undo reaches the others', async () => {
    // The operator's hold lands while node a loads the whole state at its first sync, after the
    // state was read from Redis and before a's egress share is brought in line with it.
    let id = 0;
    const a = await node('a', undefined, false, (control) => ({
      apply: async () => undefined,
      reload: async () => {
        if (id === 0) id = await control.hold({ tenant: 't1', reason: 'made while syncing' });
      },
      inForce: () => [],
    }));
    expect(id).not.toBe(0);
    expect(a.control.event(id)).toMatchObject({ undone_at: null });
    expect(tenantBlocks(a)).toEqual(['t1@*']);
    const b = await node('b');
    await until(() => tenantBlocks(b).includes('t1@*'), 3000, 'the hold on b');
    expect(await a.control.undo(id, 'ops')).not.toBeNull();
    await until(() => tenantBlocks(b).length === 0, 3000, 'the undo on b');
  });

  it('a hold made outside a cluster stays the node\'s own when it joins one', async () => {
    const alone = await node('c', undefined, true);
    await alone.control.hold({ tenant: 't9', reason: 'before the cluster' });
    const dir = alone.dataDir;
    await stop(alone);
    const c = await node('c', dir);
    const a = await node('a');
    await a.control.hold({ tenant: 't1', reason: 'in the cluster' });
    await until(() => tenantBlocks(c).includes('t1@*'));
    expect(tenantBlocks(c)).toEqual(['t1@*', 't9@*']);
    expect(tenantBlocks(a)).toEqual(['t1@*']);
  });
});
