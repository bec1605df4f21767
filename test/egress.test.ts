// The egress end to end: tenants submit from their own networks; Ichidan delivers through the
// site scheduler to sink MX servers on 127.0.0.x found through a loopback DNS server.
import { execFile } from 'node:child_process';
import { writeFile } from 'node:fs/promises';
import { request } from 'node:http';
import { promisify } from 'node:util';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import nodemailer from 'nodemailer';
import { afterEach, describe, expect, it } from 'vitest';
import { adminRequest, baseConfig, startApp, waitUntil, type ConfigInput, type TestApp } from './helpers/app.js';
import { startDns, type TestDns } from './helpers/dns-server.js';
import { startSink, type Sink, type SinkOptions } from './helpers/sink.js';

const CLI = join(import.meta.dirname, '..', 'dist', 'mta', 'mta-main.js');
const TENANT_NET = { a: '127.0.0.21', b: '127.0.0.22', c: '127.0.0.23' } as const;

const cleanup: Array<() => Promise<unknown>> = [];
afterEach(async () => {
  for (const c of cleanup.splice(0).reverse()) await c();
});

/** Sinks on several loopback addresses sharing one port (delivery.mxPort is one number). */
async function sinks(specs: Array<SinkOptions & { host: string }>): Promise<Sink[]> {
  for (let attempt = 0; attempt < 5; attempt++) {
    const first = await startSink(specs[0]);
    const out = [first];
    try {
      for (const s of specs.slice(1)) out.push(await startSink({ ...s, port: first.port }));
      for (const s of out) cleanup.push(() => s.close());
      return out;
    } catch {
      for (const s of out) await s.close();
    }
  }
  throw new Error('no port free on every sink address');
}

function zones(map: Record<string, string>): Record<string, { mx?: Array<{ exchange: string; priority: number }>; a?: string[] }> {
  const z: Record<string, { mx?: Array<{ exchange: string; priority: number }>; a?: string[] }> = {};
  for (const [domain, ip] of Object.entries(map)) {
    z[domain] = { mx: [{ exchange: `mx.${domain}`, priority: 10 }] };
    z[`mx.${domain}`] = { a: [ip] };
  }
  return z;
}

async function dns(map: Record<string, string>): Promise<TestDns> {
  const server = await startDns(zones(map));
  cleanup.push(() => server.close());
  return server;
}

async function app(d: TestDns, sinkPort: number, extra: (dataDir: string) => Partial<ConfigInput>): Promise<TestApp> {
  const t = await startApp((dataDir) => {
    const more = extra(dataDir);
    return baseConfig(dataDir, {
      listeners: [{ name: 'mx', role: 'mx', port: 0, tls: 'none' }],
      dns: { servers: [d.server] },
      queue: { fsync: false, retryInitial: '300ms', retryMax: '1s', retryJitter: 0 },
      ...more,
      tenants: {
        a: { networks: [`${TENANT_NET.a}/32`] },
        b: { networks: [`${TENANT_NET.b}/32`] },
        c: { networks: [`${TENANT_NET.c}/32`] },
        ...more.tenants,
      },
      delivery: { mxPort: sinkPort, mtaSts: { enabled: false }, ...more.delivery },
    });
  });
  cleanup.push(() => t.stop());
  return t;
}

/** Submits `count` messages from a tenant's network, `parallel` SMTP sessions at a time; each carries its send time. */
async function send(t: TestApp, tenant: keyof typeof TENANT_NET, to: string, count: number, parallel = 4): Promise<void> {
  const transport = nodemailer.createTransport({
    host: '127.0.0.1', port: t.port(), secure: false, ignoreTLS: true, localAddress: TENANT_NET[tenant],
    pool: true, maxConnections: parallel, maxMessages: Infinity,
  } as never);
  try {
    await Promise.all(Array.from({ length: count }, (_, i) => transport.sendMail({
      from: `sender@${tenant}.tenant.test`, to, subject: `${tenant} ${i}`, text: 'hello\n',
      headers: { 'X-Sent': String(Date.now()), 'X-Tenant': tenant },
    })));
  } finally {
    transport.close();
  }
}

const header = (data: Buffer, name: string) => new RegExp(`^${name}: (.*)$`, 'mi').exec(data.toString('latin1'))?.[1]?.trim();
const latency = (m: { data: Buffer; at: number }) => m.at - Number(header(m.data, 'X-Sent'));

/** A config file for the CLI that points at the running test app's data folder. */
async function cliConfig(t: TestApp): Promise<string> {
  const file = join(t.dataDir, 'cli.yaml');
  await writeFile(file, `dataDir: ${JSON.stringify(t.dataDir)}\n`);
  return file;
}

function metrics(t: TestApp): Promise<string> {
  return new Promise((resolve, reject) => {
    request({ socketPath: join(t.dataDir, 'admin.sock'), path: '/metrics' }, (res) => {
      let text = '';
      res.on('data', (c: Buffer) => { text += c; });
      res.on('end', () => resolve(text));
    }).on('error', reject).end();
  });
}

async function api(t: TestApp, method: string, url: string, body?: unknown) {
  return adminRequest(join(t.dataDir, 'admin.sock'), method, url, body);
}

describe('egress', () => {
  it('shares a capped MX fairly among three tenants: never past its 10 connections, none refused, connections reused', async () => {
    const [mx] = await sinks([{ host: '127.0.0.34', maxConnectionsPerClient: 10, replyDelay: 5 }]);
    const d = await dns({ 'capped.test': '127.0.0.34' });
    const t = await app(d, mx.port, () => ({
      delivery: { sites: { capped: { domains: ['capped.test'], maxConnections: 10, initialConnections: 2 } } },
    }));
    const n = 80;
    const start = Date.now();
    await Promise.all((['a', 'b', 'c'] as const).map((tenant) => send(t, tenant, `rcpt@capped.test`, n)));
    await mx.waitFor(3 * n, 60_000);
    expect(mx.refused).toBe(0);
    expect(mx.peakConnections).toBeLessThanOrEqual(10);
    // slow start began at 2 and grew toward the limit
    expect(mx.peakConnections).toBeGreaterThan(2);
    expect(mx.messages.length / mx.connections).toBeGreaterThan(3);
    const finish = (['a', 'b', 'c'] as const).map((tenant) => Math.max(...mx.messages.filter((m) => header(m.data, 'X-Tenant') === tenant).map((m) => m.at)) - start);
    // the three finish together: the last one within 15% of the first
    expect(Math.max(...finish) / Math.min(...finish)).toBeLessThan(1.15);
  });

  it('keeps tenants A and B at their usual latency while tenant C\'s MX is a tarpit', async () => {
    const [ma, mb, mc] = await sinks([
      { host: '127.0.0.31' }, { host: '127.0.0.32' }, { host: '127.0.0.33', replyDelay: 8_000 },
    ]);
    const d = await dns({ 'a.test': '127.0.0.31', 'b.test': '127.0.0.32', 'c.test': '127.0.0.33' });
    const t = await app(d, ma.port, () => ({ delivery: { site: { maxConnections: 5 } } }));
    await send(t, 'c', 'rcpt@c.test', 60, 6);
    // C's mail is all queued and its MX holds every connection it gets
    await waitUntil(() => mc.open >= 5, 10_000, 'the tarpit to hold its connections');
    const began = Date.now();
    await Promise.all([send(t, 'a', 'rcpt@a.test', 10), send(t, 'b', 'rcpt@b.test', 10)]);
    await Promise.all([ma.waitFor(10, 15_000), mb.waitFor(10, 15_000)]);
    const worst = Math.max(...[...ma.messages, ...mb.messages].map(latency));
    // without isolation A and B would wait behind C's 8 s replies
    expect(worst).toBeLessThan(2_000);
    expect(Date.now() - began).toBeLessThan(4_000);
    expect(mc.messages).toHaveLength(0);
    expect(mc.open).toBeLessThanOrEqual(5);
  });

  it('pauses a throttled source address, suspends the tenant that caused it, moves the other tenant to its second address, and undoes on request', async () => {
    // The MX rate-limits the first source address after 8 messages from it; the second address it never limits.
    let fromFirst = 0;
    const [mx] = await sinks([{
      host: '127.0.0.35',
      mail: (ip) => (ip === '127.0.0.41' && ++fromFirst > 8 ? { code: 451, text: '4.7.1 Too many messages from your IP, rate limited' } : undefined),
    }]);
    const d = await dns({ 'busy.test': '127.0.0.35' });
    const pool = [{ address: '127.0.0.41', helo: 'out1.ichidan.test' }, { address: '127.0.0.42', helo: 'out2.ichidan.test' }];
    const t = await app(d, mx.port, () => ({
      tenants: {
        a: { networks: [`${TENANT_NET.a}/32`], egress: { sourcePool: 'shared' } },
        c: { networks: [`${TENANT_NET.c}/32`], egress: { sourcePool: 'shared' } },
      },
      delivery: {
        sourcePools: { shared: pool },
        site: { maxConnections: 2, initialConnections: 2 },
        throttle: { pause: '10m', minSignals: 1, attributionShare: 0.6, tenantSuspension: '10m' },
      },
    }));
    await send(t, 'a', 'rcpt@busy.test', 3);
    await mx.waitFor(3);
    await send(t, 'c', 'rcpt@busy.test', 40);
    const events = async () => ((await api(t, 'GET', '/v1/egress/events?open=1')).body.events as Array<{ id: number; kind: string; tenant: string | null; source: string | null }>);
    await waitUntil(async () => (await events()).some((e) => e.kind === 'suspended'), 20_000, 'the heavy tenant to be suspended');
    const open = await events();
    const paused = open.find((e) => e.kind === 'paused')!;
    expect(paused.source).toBe('127.0.0.41');
    const suspended = open.find((e) => e.kind === 'suspended')!;
    expect(suspended.tenant).toBe('c');
    // tenant A keeps flowing, from the address that is not paused (once C's deliveries already under way have ended)
    await waitUntil(() => t.app.queue.scheduler.active === 0, 10_000, 'the deliveries under way to end');
    const before = mx.messages.length;
    await send(t, 'a', 'rcpt@busy.test', 5);
    await mx.waitFor(before + 5, 10_000);
    const late = mx.messages.slice(before);
    expect(late.every((m) => header(m.data, 'X-Tenant') === 'a' && m.clientAddress === '127.0.0.42')).toBe(true);
    // C's mail waits while suspended
    const cDelivered = mx.messages.filter((m) => header(m.data, 'X-Tenant') === 'c').length;
    expect(cDelivered).toBeLessThan(40);
    // the events are listed by the CLI; undoing the suspension lets C's mail go, on the address still open
    const cli = await cliConfig(t);
    const { stdout } = await promisify(execFile)(process.execPath, [CLI, 'egress', 'events', '--open', '-c', cli]);
    expect(stdout).toMatch(new RegExp(`^${suspended.id}\t.*\tsuspended\tauto\ttenant=c site=mx:mx.busy.test\tuntil `, 'm'));
    expect(stdout).toMatch(/\tpaused\tauto\t.*source=127\.0\.0\.41\t.*Too many messages/);
    const text = await metrics(t);
    expect(text).toMatch(/^ichidan_egress_events_total\{kind="suspended",actor="auto"\} 1$/m);
    expect(text).toMatch(/^ichidan_egress_blocks 2$/m);
    expect(text).toMatch(/^ichidan_egress_pair_window\{site="mx:mx.busy.test",source="127.0.0.41"\} 1$/m);
    const undone = await api(t, 'POST', `/v1/egress/events/${suspended.id}/undo`, { by: 'test' });
    expect(undone.status).toBe(200);
    await waitUntil(() => mx.messages.filter((m) => header(m.data, 'X-Tenant') === 'c').length === 40, 20_000, 'C\'s mail after the undo');
    const afterPause = mx.messages.filter((m) => header(m.data, 'X-Tenant') === 'c').slice(cDelivered);
    expect(afterPause.every((m) => m.clientAddress === '127.0.0.42')).toBe(true);
    expect((await api(t, 'POST', `/v1/egress/events/${suspended.id}/undo`, {})).status).toBe(404);
  });

  it('keeps an operator\'s purge and hold made while the attempt was in flight', async () => {
    const [mx] = await sinks([{ host: '127.0.0.39', replyDelay: 600, rcpt: () => ({ code: 451, text: '4.3.0 try later' }) }]);
    const d = await dns({ 'slow.test': '127.0.0.39' });
    const t = await app(d, mx.port, () => ({}));
    await send(t, 'a', 'one@slow.test', 1, 1);
    await send(t, 'b', 'two@slow.test', 1, 1);
    await waitUntil(() => mx.open >= 2, 5_000, 'both attempts in flight');
    expect((await api(t, 'POST', '/v1/queue/purge', { tenant: 'a' })).body).toEqual({ purged: 1 });
    const held = t.app.queue.store.openRecipients().find((r) => r.tenant === 'b')!;
    expect((await api(t, 'POST', '/v1/queue/hold', { message: held.message_id })).body).toEqual({ held: 1 });
    // the destination's 451 comes back after the operator's word, and does not undo it
    await waitUntil(() => mx.rcptAttempts.size === 2 && t.app.queue.scheduler.active === 0, 10_000, 'the attempts to end');
    await new Promise((r) => setTimeout(r, 1_500));
    expect([...mx.rcptAttempts.values()]).toEqual([1, 1]);
    const states = new Database(join(t.dataDir, 'queue.db'), { readonly: true });
    try {
      const rows = states.prepare(`SELECT tenant, state FROM recipients ORDER BY tenant`).all();
      // the purged message is gone (swept as done); the held one waits
      expect(rows).toEqual([{ tenant: 'b', state: 'held' }]);
    } finally {
      states.close();
    }
  });

  it('holds, releases and purges by tenant, by site and by message', async () => {
    const [ma, mb] = await sinks([{ host: '127.0.0.36' }, { host: '127.0.0.37' }]);
    const d = await dns({ 'hold-a.test': '127.0.0.36', 'hold-b.test': '127.0.0.37' });
    const t = await app(d, ma.port, () => ({}));
    // a tenant held: its mail stays queued, the others' goes
    expect((await api(t, 'POST', '/v1/queue/hold', { tenant: 'a', reason: 'billing' })).status).toBe(200);
    await send(t, 'a', 'rcpt@hold-a.test', 3);
    await send(t, 'b', 'rcpt@hold-b.test', 3);
    await mb.waitFor(3);
    await new Promise((r) => setTimeout(r, 300));
    expect(ma.messages).toHaveLength(0);
    expect((await api(t, 'POST', '/v1/queue/release', { tenant: 'a' })).status).toBe(200);
    await ma.waitFor(3);
    // a site held (every tenant's mail for it), then released
    const site = 'mx:mx.hold-b.test';
    expect((await api(t, 'POST', '/v1/queue/hold', { site })).status).toBe(200);
    await send(t, 'c', 'rcpt@hold-b.test', 2);
    await new Promise((r) => setTimeout(r, 300));
    expect(mb.messages).toHaveLength(3);
    const status = await api(t, 'GET', '/v1/egress');
    expect((status.body.blocks as Array<{ site?: string }>).some((b) => b.site === site)).toBe(true);
    // purge by site: C's two messages for it are removed without a notice
    const purged = await api(t, 'POST', '/v1/queue/purge', { site });
    expect(purged.body).toEqual({ purged: 2 });
    expect((await api(t, 'POST', '/v1/queue/release', { site })).status).toBe(200);
    await new Promise((r) => setTimeout(r, 300));
    expect(mb.messages).toHaveLength(3);
    // a tenant suspended for a while, by the tenants route: lifts by itself
    expect((await api(t, 'POST', '/v1/tenants/b/suspend', { for: '600ms', reason: 'abuse report' })).status).toBe(200);
    await send(t, 'b', 'rcpt@hold-b.test', 1);
    await new Promise((r) => setTimeout(r, 250));
    expect(mb.messages).toHaveLength(3);
    await mb.waitFor(4, 5_000);
    // one message held and another purged while their tenant is held; the held one goes out when released
    expect((await api(t, 'POST', '/v1/queue/hold', { tenant: 'c' })).status).toBe(200);
    await send(t, 'c', 'rcpt@hold-a.test', 2, 1);
    const ids = [...new Set(t.app.queue.store.openRecipients().filter((r) => r.tenant === 'c').map((r) => r.message_id))];
    expect(ids).toHaveLength(2);
    expect((await api(t, 'POST', '/v1/queue/hold', { message: ids[0] })).body).toEqual({ held: 1 });
    expect((await api(t, 'POST', '/v1/queue/purge', { message: ids[1] })).body).toEqual({ purged: 1 });
    const { stdout } = await promisify(execFile)(process.execPath, [CLI, 'tenants', 'resume', 'c', '-c', await cliConfig(t)]);
    expect(stdout).toBe('c: resumed (1 lifted)\n');
    await new Promise((r) => setTimeout(r, 300));
    expect(ma.messages).toHaveLength(3);
    expect((await api(t, 'POST', '/v1/queue/release', { message: ids[0] })).body).toEqual({ released: 1 });
    await ma.waitFor(4);
    await new Promise((r) => setTimeout(r, 300));
    expect(ma.messages).toHaveLength(4);
    // bad requests are named
    expect((await api(t, 'POST', '/v1/queue/hold', {})).status).toBe(400);
    expect((await api(t, 'POST', '/v1/tenants/b/suspend', { for: 'soon' })).body.error).toMatch(/"for" must be a duration/);
  });
});
