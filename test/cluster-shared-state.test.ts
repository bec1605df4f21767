/*
 * Operator and control state shared by three nodes, each a real process (the built CLI) on its own
 * loopback address with its own data folder and admin socket, and a real redis-server: what an
 * operator does on one node is in force on the others within a second; a node that was down
 * catches up when it returns; with Redis gone a restarted node keeps what it knew (its SQLite
 * copy), and what it does meanwhile is shared when Redis returns; a message held on one node is
 * released from another.
 */
import { createWriteStream, type WriteStream } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { request } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { stringify } from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { adminRequest, baseConfig, waitUntil } from './helpers/app.js';
import { startChild, type ChildIchidan } from './helpers/child.js';
import { RawSmtp } from './helpers/raw-smtp.js';
import { redisSupport, startRedis, type TestRedis } from './helpers/redis.js';

const support = redisSupport();
const SITE1 = 'mx:mx.t1.test';
const SITE2 = 'mx:mx.t2.test';

interface Block { id: string; tenant?: string; site?: string; source?: string; until: number | null }
interface Event { id: number; kind: string; tenant: string | null; site: string | null; uid: string; origin: string; undone_by: string | null }

describe.skipIf(!support.ok)('operator state shared by three nodes (real Redis, nodes as processes)', () => {
  let redis: TestRedis;
  let dir: string;
  let log: WriteStream;
  const nodes: Array<ChildIchidan | null> = [null, null, null];

  const configFile = (i: number) => join(dir, `n${i + 1}.yaml`);
  const api = async (i: number, method: string, url: string, body?: unknown) => adminRequest(join(dir, `n${i + 1}`, 'admin.sock'), method, url, body);
  const blocks = async (i: number) => (await api(i, 'GET', '/v1/egress')).body.blocks as Block[];
  const engine = async (i: number) => ((await api(i, 'GET', '/v1/engines')).body.engines as Array<{ name: string; state: string; disabledReason: string | null }>)[0];
  const metrics = (i: number) => new Promise<string>((resolve, reject) => {
    request({ socketPath: join(dir, `n${i + 1}`, 'admin.sock'), path: '/metrics' }, (res) => {
      let text = '';
      res.on('data', (c: Buffer) => { text += c; });
      res.on('end', () => resolve(text));
    }).on('error', reject).end();
  });
  const metric = (text: string, name: string) => Number(new RegExp(`^${name.replace(/[{}"]/g, '\\$&')} (\\S+)$`, 'm').exec(text)?.[1] ?? NaN);
  const events = async (i: number) => (await api(i, 'GET', '/v1/egress/events?open=1')).body.events as Event[];

  async function start(i: number): Promise<void> {
    nodes[i] = await startChild(configFile(i), log);
  }
  async function kill(i: number, signal: NodeJS.Signals = 'SIGKILL'): Promise<void> {
    const n = nodes[i]!;
    nodes[i] = null;
    n.proc.kill(signal);
    await n.exited;
  }

  /** Polls nodes `on` until `check` holds on each; resolves with the milliseconds the slowest took. */
  async function inForce(on: number[], check: (i: number) => Promise<boolean>, ms = 1000, what = 'the change'): Promise<number> {
    const t0 = Date.now();
    let slowest = 0;
    await Promise.all(on.map(async (i) => {
      await waitUntil(() => check(i), ms, `${what} on node ${i + 1}`);
      slowest = Math.max(slowest, Date.now() - t0);
    }));
    return slowest;
  }

  beforeAll(async () => {
    redis = await startRedis();
    dir = await mkdtemp(join(tmpdir(), 'ichidan-cluster-state-'));
    log = createWriteStream(process.env.ICHIDAN_TEST_LOG ?? join(dir, 'nodes.log'));
    for (let i = 0; i < 3; i++) {
      await writeFile(configFile(i), stringify(baseConfig(join(dir, `n${i + 1}`), {
        log: { level: 'info' },
        listeners: [{ name: 'mx', role: 'mx', address: `127.0.0.${i + 1}`, port: 0 }],
        tenants: { t1: { domains: ['t1.test'] }, t2: { domains: ['t2.test'] } },
        // Nothing listens there: mail that is let through is deferred and stays queued.
        routes: { 't1.test': { host: '127.0.0.9', port: 9 }, 't2.test': { host: '127.0.0.9', port: 9 } },
        // A shadow engine: switched on and off, never in the way of mail (nothing listens there either).
        engines: [{ name: 'clamav', type: 'clamd', shadow: true, servers: [{ host: '127.0.0.9', port: 9 }] }],
        cluster: { redis: redis.url, node: `n${i + 1}`, heartbeat: '200ms', leaseTtl: '1s' },
      })));
    }
    await Promise.all([0, 1, 2].map(start));
    // Every node has joined the shared state once a first hold made on node 1 is in force everywhere.
    const { body } = await api(0, 'POST', '/v1/queue/hold', { site: 'mx:warm.up', for: '1m', reason: 'warm-up' });
    await inForce([1, 2], async (i) => (await blocks(i)).some((b) => b.site === 'mx:warm.up'), 15_000, 'the warm-up hold');
    // The hold is still node 1's to undo (a hold made while a node loads the shared state used to be lifted there).
    expect((await api(0, 'POST', `/v1/egress/events/${String(body.event)}/undo`, {})).status).toBe(200);
    await inForce([1, 2], async (i) => !(await blocks(i)).some((b) => b.site === 'mx:warm.up'), 15_000, 'the warm-up undo');
  });
  afterAll(async () => {
    for (let i = 0; i < 3; i++) if (nodes[i]) await kill(i, 'SIGTERM');
    log?.end();
    await redis?.stop();
    await rm(dir, { recursive: true, force: true });
  });

  it('a suspension, a hold, an engine switch and their undos made on one node are in force on the others within 1 s', async () => {
    let r = await api(0, 'POST', '/v1/tenants/t1/suspend', { site: SITE1, reason: 'complaints' });
    expect(r.status).toBe(200);
    const suspension = await inForce([1, 2], async (i) => (await blocks(i)).some((b) => b.tenant === 't1' && b.site === SITE1));

    r = await api(0, 'POST', '/v1/queue/hold', { site: SITE2, reason: 'maintenance at the destination' });
    expect(r.status).toBe(200);
    const hold = await inForce([1, 2], async (i) => (await blocks(i)).some((b) => b.tenant === undefined && b.site === SITE2));

    r = await api(0, 'POST', '/v1/engines/clamav/disable', { reason: 'vendor outage' });
    expect(r.status).toBe(200);
    const disable = await inForce([1, 2], async (i) => (await engine(i)).state === 'disabled');
    expect((await engine(2)).disabledReason).toBe('vendor outage');

    // Node 2 lists node 1's suspension under its own id; undoing it there lifts it everywhere.
    const onTwo = (await events(1)).find((e) => e.kind === 'suspended' && e.tenant === 't1')!;
    const onOne = (await events(0)).find((e) => e.kind === 'suspended' && e.tenant === 't1')!;
    expect(onTwo.uid).toBe(onOne.uid);
    expect(onTwo.origin).toBe('n1');
    r = await api(1, 'POST', `/v1/egress/events/${onTwo.id}/undo`, { by: 'alice' });
    expect(r.status).toBe(200);
    const undo = await inForce([0, 2], async (i) => !(await blocks(i)).some((b) => b.tenant === 't1' && b.source === undefined));
    expect((await api(0, 'GET', '/v1/egress/events?last=10')).body.events).toEqual(
      expect.arrayContaining([expect.objectContaining({ uid: onOne.uid, undone_by: 'alice' })]));
    // Undone once: a second undo of the same event finds nothing in force, on any node.
    const onThree = ((await api(2, 'GET', '/v1/egress/events?last=50')).body.events as Event[]).find((e) => e.uid === onOne.uid)!;
    expect((await api(2, 'POST', `/v1/egress/events/${onThree.id}/undo`, {})).status).toBe(404);

    r = await api(0, 'POST', '/v1/engines/clamav/enable');
    expect(r.status).toBe(200);
    const enable = await inForce([1, 2], async (i) => (await engine(i)).state === 'enabled');

    r = await api(2, 'POST', '/v1/queue/release', { site: SITE2 });
    expect(r.status).toBe(200);
    const release = await inForce([0, 1], async (i) => !(await blocks(i)).some((b) => b.site === SITE2));
    console.log(`shared state: in force on the other nodes after suspension ${suspension} ms, hold ${hold} ms, engine disable ${disable} ms, undo ${undo} ms, enable ${enable} ms, release ${release} ms`);
    for (const ms of [suspension, hold, disable, undo, enable, release]) expect(ms).toBeLessThan(1000);
    // Node 3 applied what the others did and published nothing; node 1 published what it did.
    const three = await metrics(2);
    expect(metric(three, 'ichidan_cluster_state_changes_total{direction="applied"}')).toBeGreaterThanOrEqual(6);
    expect(metric(three, 'ichidan_cluster_state_changes_total{direction="published"}')).toBe(1);
    expect(metric(three, 'ichidan_cluster_state_synced')).toBe(1);
    expect(metric(three, 'ichidan_cluster_state_unpublished')).toBe(0);
    expect(metric(await metrics(0), 'ichidan_cluster_state_changes_total{direction="published"}')).toBeGreaterThanOrEqual(5);
  });

  it('a message held on node 2 is released by asking node 1', async () => {
    // Suspended cluster-wide first, so the message waits in node 2's queue.
    await api(0, 'POST', '/v1/tenants/t2/suspend', { reason: 'for the release test' });
    await inForce([1], async (i) => (await blocks(i)).some((b) => b.tenant === 't2' && b.site === undefined));
    const c = await RawSmtp.open(nodes[1]!.ports.mx, '127.0.0.2');
    await c.reply();
    for (const line of ['EHLO client.test', 'MAIL FROM:<a@sender.test>', 'RCPT TO:<b@t2.test>', 'DATA']) expect(await c.command(line)).toMatch(/^[23]/);
    const id = await c.finishData('Subject: held\r\n\r\nheld on node 2\r\n');
    c.close();
    expect((await api(1, 'POST', '/v1/queue/hold', { message: id })).status).toBe(200);
    const r = await api(0, 'POST', `/v1/messages/${id}/release`);
    expect(r).toEqual({ status: 200, body: { released: 1, node: 'n2' } });
    // A message no node holds: asked, not answered.
    const none = await api(0, 'POST', '/v1/messages/NOSUCHMESSAGE1/release');
    expect(none.status).toBe(202);
    expect(none.body.asked).toBe(true);
    await api(0, 'POST', '/v1/tenants/t2/resume', {});
    await inForce([1, 2], async (i) => !(await blocks(i)).some((b) => b.tenant === 't2' && b.source === undefined));
  });

  it('a node that was down while changes happened catches up when it returns', async () => {
    await kill(2);
    const hold = await api(0, 'POST', '/v1/queue/hold', { tenant: 't2', site: SITE2, reason: 'while node 3 was down' });
    await api(0, 'POST', '/v1/tenants/t1/suspend', { reason: 'suspended, then resumed while node 3 was away' });
    await inForce([1], async (i) => (await blocks(i)).some((b) => b.tenant === 't1' && b.source === undefined));
    expect((await api(1, 'POST', '/v1/tenants/t1/resume', {})).status).toBe(200);
    // The last change: once node 3 has it, it has caught up with every change before it (applied in order).
    await api(1, 'POST', '/v1/engines/clamav/disable', { reason: 'down while node 3 was away' });
    await start(2);
    await inForce([2], async (i) => (await blocks(i)).some((b) => b.tenant === 't2' && b.site === SITE2) && (await engine(i)).state === 'disabled', 5000, 'what node 3 missed');
    expect((await blocks(2)).some((b) => b.tenant === 't1' && b.source === undefined)).toBe(false);
    await api(0, 'POST', `/v1/egress/events/${String(hold.body.event)}/undo`, {});
    await api(0, 'POST', '/v1/engines/clamav/enable');
    await inForce([1, 2], async (i) => !(await blocks(i)).some((b) => b.tenant === 't2' && b.source === undefined) && (await engine(i)).state === 'enabled');
  });

  it('with Redis killed a restarted node keeps what it knew, and what a node does meanwhile is shared when Redis returns', async () => {
    await api(0, 'POST', '/v1/queue/hold', { tenant: 't1', reason: 'known before Redis went away' });
    await api(0, 'POST', '/v1/engines/clamav/disable', { reason: 'known before Redis went away' });
    await inForce([1, 2], async (i) => (await blocks(i)).some((b) => b.tenant === 't1' && b.source === undefined) && (await engine(i)).state === 'disabled');
    await redis.kill();
    await kill(1);
    await start(1);
    expect((await blocks(1)).some((b) => b.tenant === 't1' && b.site === undefined)).toBe(true);
    expect((await engine(1)).state).toBe('disabled');
    // Taken on node 2 while Redis is away: in force there at once, shared when Redis returns.
    expect((await api(1, 'POST', '/v1/queue/hold', { tenant: 't2', reason: 'while Redis was away' })).status).toBe(200);
    expect((await blocks(1)).some((b) => b.tenant === 't2' && b.source === undefined)).toBe(true);
    expect((await blocks(0)).some((b) => b.tenant === 't2' && b.source === undefined)).toBe(false);
    await redis.restart();
    await inForce([0, 2], async (i) => (await blocks(i)).some((b) => b.tenant === 't2' && b.source === undefined), 10_000, 'the hold made while Redis was away');
    // What the nodes had in force went back into the empty Redis: still in force everywhere, and undone from any node.
    const onThree = (await events(2)).find((e) => e.kind === 'hold' && e.tenant === 't1')!;
    expect((await api(2, 'POST', `/v1/egress/events/${onThree.id}/undo`, {})).status).toBe(200);
    await inForce([0, 1], async (i) => !(await blocks(i)).some((b) => b.tenant === 't1' && b.source === undefined), 1000, 'the undo after Redis returned');
    expect((await engine(0)).state).toBe('disabled');
  });
});
