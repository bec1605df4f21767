import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { parseConfig } from '../mta/index.js';
import { Scheduler } from './queue-scheduler.js';
import { QueueStore } from './queue-store.js';
import { EgressControl } from './queue-egress-control.js';
import { QueueRecords } from './queue-records.js';

const SITE = 'mx:mx.test';
const log = pino({ level: 'silent' });
const stores: Array<{ store: QueueStore; dir: string }> = [];
afterEach(async () => {
  for (const { store, dir } of stores.splice(0)) {
    await store.close();
    await rm(dir, { recursive: true, force: true });
  }
});

async function setup(throttle: Record<string, unknown> = {}, dir?: string) {
  const dataDir = dir ?? await mkdtemp(join(tmpdir(), 'ichidan-throttle-'));
  const config = parseConfig({ dataDir, delivery: { throttle: { pause: '1m', maxPause: '10m', window: '10m', minSignals: 2, attributionShare: 0.6, tenantSuspension: '30m', ...throttle } } } as never, 'test');
  const store = new QueueStore(join(dataDir, 'queue.db'), false);
  if (!dir) stores.push({ store, dir: dataDir });
  const scheduler = new Scheduler({ concurrency: 10, laneConcurrency: 10 }, {
    run: () => new Promise(() => undefined),
    resolveSite: () => ({ key: SITE, limits: { maxConnections: 8, initialConnections: 8 } }),
    tenantPolicy: () => ({ weight: 1, sources: [{ address: null, helo: null }] }),
  });
  // place a pair so its window exists
  scheduler.add({ messageId: 'm', tenant: 'x', domain: 'mx.test', recipientIds: [0], due: 0 });
  const control = new EgressControl(config, scheduler, new QueueRecords(store, log, () => ({ scans: 0, transcripts: 0 })), log);
  const settle = () => store.write([]);
  return { store, scheduler, control, settle, dataDir };
}

const ok = { kind: 'ok' as const, detail: '' };
const throttled = { kind: 'throttled' as const, detail: '421 4.7.0 too many connections' };

describe('throttle control', () => {
  it('holds a pair below a connection cap the destination showed at its banner: no pause, no suspension, whichever tenants sent', async () => {
    const { control, scheduler, settle } = await setup();
    const now = Date.now();
    const capped = { kind: 'capped' as const, detail: '421 4.7.0 mx.test Error: too many connections from 127.0.0.1', open: 6 };
    for (let i = 0; i < 8; i++) control.onSignal(SITE, null, 'c', ok, now);
    control.onSignal(SITE, null, 'a', ok, now);
    for (let i = 0; i < 6; i++) control.onSignal(SITE, null, i % 2 ? 'c' : 'a', capped, now + i);
    await settle();
    expect(control.events({ limit: 10 })).toEqual([]);
    expect(scheduler.blocks()).toEqual([]);
    expect(scheduler.window(SITE, null)).toBe(5);
    expect(scheduler.connections(SITE, null)).toBe(5);
  });

  it('pauses the pair and halves its window; a tenant alone at a site is not suspended', async () => {
    const { control, scheduler, settle } = await setup();
    const t0 = 1_000_000;
    for (let i = 0; i < 5; i++) control.onSignal(SITE, null, 'c', throttled, t0 + i);
    await settle();
    const events = control.events({ limit: 10 });
    expect(events.map((e) => e.kind)).toEqual(['paused']);
    expect(events[0]).toMatchObject({ site: SITE, source: '', tenant: 'c', actor: 'auto', until: t0 + 60_000 });
    expect(scheduler.window(SITE, null)).toBe(4);
    expect(scheduler.blocks()).toHaveLength(0); // expired: these events are in the past of the real clock
  });

  it('does not grow a paused pair\'s window again with the successes of deliveries that began before the throttle', async () => {
    const { control, scheduler } = await setup();
    const t0 = Date.now();
    scheduler.setWindow(SITE, null, 1);
    control.onSignal(SITE, null, 'c', throttled, t0);
    expect(scheduler.window(SITE, null)).toBe(1);
    // the delivery already under way on the pair ends well while the pause lasts
    control.onSignal(SITE, null, 'c', ok, t0 + 10);
    expect(scheduler.window(SITE, null)).toBe(1);
    // once the pause is over, successes grow it as usual
    control.onSignal(SITE, null, 'c', ok, t0 + 61_000);
    expect(scheduler.window(SITE, null)).toBe(2);
  });

  it('doubles the pause for each further throttle within the window', async () => {
    const { control, settle } = await setup();
    const t0 = Date.now();
    control.onSignal(SITE, null, 'c', throttled, t0);
    control.onSignal(SITE, null, 'c', throttled, t0 + 61_000);
    control.onSignal(SITE, null, 'c', throttled, t0 + 61_000 + 121_000);
    await settle();
    const untils = control.events({ limit: 10 }).reverse().map((e) => e.until! - e.at);
    expect(untils).toEqual([60_000, 120_000, 240_000]);
  });

  it('suspends the tenant whose traffic dominates the site and leaves the others flowing', async () => {
    const { control, scheduler, settle } = await setup();
    const now = Date.now();
    control.onSignal(SITE, null, 'a', ok, now);
    control.onSignal(SITE, null, 'b', ok, now);
    for (let i = 0; i < 8; i++) control.onSignal(SITE, null, 'c', ok, now);
    control.onSignal(SITE, null, 'c', throttled, now + 1);
    control.onSignal(SITE, '127.0.0.2', 'c', throttled, now + 2);
    await settle();
    const events = control.events({ limit: 10, open: true });
    const suspended = events.find((e) => e.kind === 'suspended')!;
    expect(suspended).toMatchObject({ tenant: 'c', site: SITE, until: now + 2 + 1_800_000 });
    expect(suspended.reason).toMatch(/^\d+% of the site's (deliveries|throttle signals)/);
    const blocks = scheduler.blocks();
    expect(blocks.filter((b) => b.tenant === 'c' && b.site === SITE)).toHaveLength(1);
    expect(blocks.filter((b) => b.tenant === 'a' || b.tenant === 'b')).toHaveLength(0);
    // undone: the block is lifted and the event says who undid it
    const undone = await control.undo(suspended.id, 'ops');
    expect(undone).toMatchObject({ id: suspended.id, undone_by: 'ops' });
    expect(scheduler.blocks().filter((b) => b.tenant === 'c')).toHaveLength(0);
    expect(await control.undo(suspended.id, 'ops')).toBeNull();
  });

  it('pauses on refused connections but blames no tenant for them (the host may be down)', async () => {
    const { control, settle } = await setup();
    const now = Date.now();
    control.onSignal(SITE, null, 'a', ok, now);
    for (let i = 0; i < 5; i++) control.onSignal(SITE, `127.0.0.${i + 2}`, 'c', { kind: 'refused', detail: 'ECONNREFUSED' }, now + i);
    await settle();
    const kinds = control.events({ limit: 20 }).map((e) => e.kind);
    expect(kinds.filter((k) => k === 'paused')).toHaveLength(5);
    expect(kinds).not.toContain('suspended');
  });

  it('blames nobody when the throttled traffic is evenly spread', async () => {
    const { control, settle } = await setup();
    const now = Date.now();
    for (const t of ['a', 'b', 'c']) for (let i = 0; i < 3; i++) control.onSignal(SITE, null, t, ok, now);
    control.onSignal(SITE, null, 'a', throttled, now);
    control.onSignal(SITE, '127.0.0.2', 'b', throttled, now);
    control.onSignal(SITE, '127.0.0.3', 'c', throttled, now);
    await settle();
    expect(control.events({ limit: 10 }).filter((e) => e.kind === 'suspended')).toHaveLength(0);
  });

  it('records a slowed pair at most once a minute; undo puts its window back', async () => {
    const { control, scheduler, settle } = await setup();
    const now = Date.now();
    control.onSignal(SITE, null, 'a', { kind: 'slow', detail: 'a reply took 40000 ms' }, now);
    control.onSignal(SITE, null, 'a', { kind: 'slow', detail: 'a reply took 40000 ms' }, now + 1_000);
    await settle();
    expect(scheduler.window(SITE, null)).toBe(6);
    const [slowed, ...rest] = control.events({ limit: 10 });
    expect(rest).toHaveLength(0);
    expect(JSON.parse(slowed.detail!)).toEqual({ windowBefore: 8, windowAfter: 7 });
    await control.undo(slowed.id, 'ops');
    expect(scheduler.window(SITE, null)).toBe(8);
  });

  it('puts holds and pauses still in force back after a restart; undone and expired ones stay lifted', async () => {
    const first = await setup();
    const kept = await first.control.hold({ tenant: 'a', reason: 'billing' });
    const gone = await first.control.hold({ site: SITE, reason: 'maintenance' });
    await first.control.undo(gone, 'ops');
    first.control.onSignal(SITE, null, 'c', throttled, Date.now() - 3_600_000);
    await first.settle();
    const again = await setup({}, first.dataDir);
    expect(again.control.restore()).toBe(1);
    const blocks = again.scheduler.blocks();
    expect(blocks).toHaveLength(1);
    expect(blocks[0]).toMatchObject({ tenant: 'a', until: null });
    expect(again.control.event(kept)?.reason).toBe('billing');
    await again.store.close();
  });

  it('a pause put back after a restart (or adopted from another node) pauses the pair for every tenant, not only the one it names', async () => {
    const first = await setup();
    first.control.onSignal(SITE, null, 'c', throttled, Date.now());
    await first.settle();
    const [paused] = first.control.events({ limit: 1 });
    expect(paused).toMatchObject({ kind: 'paused', tenant: 'c' });
    const again = await setup({}, first.dataDir);
    expect(again.control.restore()).toBe(1);
    expect(again.scheduler.blocks()).toEqual([expect.objectContaining({ site: SITE, source: '' })]);
    expect(again.scheduler.blocks()[0].tenant).toBeUndefined();
    const other = await setup();
    await other.control.adopt({ ...paused, uid: 'u1', origin: 'n1' });
    expect(other.scheduler.blocks()[0]).toMatchObject({ site: SITE, source: '' });
    expect(other.scheduler.blocks()[0].tenant).toBeUndefined();
    await again.store.close();
  });
});
