// What an operator watches: /metrics after real traffic (accepted, refused, delivered, deferred,
// bounced, scanned by the real clamd) with the right labels, label sets bounded with 1,000 random
// recipient domains, the Grafana dashboard's expressions
// against what the process exports, the log lines a message and a session are followed by, and
// /healthz and /readyz (no token; not ready while drained or when the spool cannot be written).
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { rename, rm, writeFile } from 'node:fs/promises';
import { request } from 'node:http';
import { join } from 'node:path';
import nodemailer from 'nodemailer';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SITE_LABELS_MAX } from '../mta/mta-metrics-labels.js';
import { baseConfig, demoConfig, startApp, TEST_HASH, TEST_PASSWORD, waitUntil, type TestApp } from './helpers/app.js';
import { startDns } from './helpers/dns-server.js';
import { realDaemon } from './helpers/daemons.js';
import { eicarMail, message } from './helpers/engine-contract.js';
import { RawSmtp } from './helpers/raw-smtp.js';
import { sendRaw } from './helpers/send-raw.js';
import { startSink, type Sink } from './helpers/sink.js';
import { authPlain, submissionSession } from './helpers/submission.js';

const TOKEN = 'metrics-test-token';
const clamd = realDaemon('clamd');
const DASHBOARD = join(import.meta.dirname, '..', 'deploy', 'grafana', 'ichidan-dashboard.json');

/** GET on the admin TCP port: the status, and the body as text. */
function get(t: TestApp, path: string, headers: Record<string, string> = {}): Promise<{ status: number; text: string }> {
  return new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port: t.app.adminPort!, path, headers }, (res) => {
      let text = '';
      res.on('data', (c: Buffer) => { text += c; });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, text }));
    });
    req.on('error', reject);
    req.end();
  });
}

const scrape = async (t: TestApp) => {
  const r = await get(t, '/metrics', { authorization: `Bearer ${TOKEN}` });
  expect(r.status).toBe(200);
  return r.text;
};

/** The value of one sample ("name{labels} value"), or null when absent. */
function sample(text: string, series: string): number | null {
  const line = text.split('\n').find((l) => l.startsWith(`${series} `));
  return line === undefined ? null : Number(line.slice(series.length + 1));
}

const mail = (id: string, to: string) => message({
  From: 'alice@example.test', To: to, Subject: 'metrics', Date: 'Wed, 25 Nov 2026 10:00:00 +0000', 'Message-ID': `<${id}@example.test>`,
}, 'hello\n');

describe('metrics and logs after real traffic', () => {
  let sink: Sink;
  let t: TestApp;

  beforeAll(async () => {
    sink = await startSink({
      host: '127.0.0.2',
      rcpt: (address) => {
        if (address.startsWith('defer')) return { code: 451, text: '4.2.2 mailbox over quota, try later' };
        if (address.startsWith('bounce')) return { code: 550, text: '5.1.1 no such user' };
        return undefined;
      },
    });
    t = await startApp(demoConfig(sink, {
      admin: { port: 0, token: TOKEN },
      engines: clamd ? [{ name: 'clamav', type: 'clamd', servers: [{ host: clamd.host, port: clamd.port }] }] : [],
      users: [{ name: 'ann@example.test', password: TEST_HASH, tenant: 'demo' }],
      queue: { retryInitial: '5s', retryMax: '10s', retryJitter: 0 },
    }));
  });
  afterAll(async () => {
    await t?.stop();
    await sink?.close();
  });

  it('counts connections, transactions, messages, deliveries, deferrals, bounces, scans and sessions with their labels', { timeout: 60_000 }, async () => {
    expect((await sendRaw(t, mail('ok-1', 'bob@example.test'), { from: 'alice@example.test', to: 'bob@example.test' })).ok).toBe(true);
    expect((await sendRaw(t, mail('defer-1', 'defer@example.test'), { from: 'alice@example.test', to: 'defer@example.test' })).ok).toBe(true);
    expect((await sendRaw(t, mail('bounce-1', 'bounce@example.test'), { from: 'alice@example.test', to: 'bounce@example.test' })).ok).toBe(true);
    if (clamd) expect((await sendRaw(t, eicarMail())).reply).toMatch(/^550 5\.7\.1 message refused: virus found/);
    // A transaction refused while drained, on a connection greeted before; then a connection refused.
    const open = await RawSmtp.open(t.port('mx'));
    expect((await open.reply())[0]).toMatch(/^220 /);
    expect(await open.command('EHLO client.test')).toMatch(/^250/);
    t.app.draining = true;
    expect(await open.command('MAIL FROM:<alice@example.test>')).toMatch(/^451 4\.3\.2 /);
    const refused = await RawSmtp.open(t.port('mx'));
    expect((await refused.reply())[0]).toMatch(/^421 4\.3\.2 /);
    t.app.draining = false;
    open.socket.destroy();
    refused.socket.destroy();
    // The ok message delivered, the bounce's DSN delivered back to the sender, the deferral deferred.
    await sink.waitFor(2, 20_000);
    await waitUntil(() => t.logs.some((l) => l.msg === 'delivery attempt' && l.verdict === 'deferred'), 20_000, 'the deferral');

    let text = '';
    await waitUntil(async () => {
      text = await scrape(t);
      return (sample(text, 'ichidan_queue_recipients{tenant="demo",state="queued"}') ?? 0) >= 1;
    }, 20_000, 'the queue depth gauge');
    expect(sample(text, 'ichidan_connections_total{listener="mx"}')).toBeGreaterThanOrEqual(clamd ? 6 : 5);
    expect(sample(text, 'ichidan_connections_refused_total{listener="mx",reason="draining"}')).toBe(1);
    expect(sample(text, 'ichidan_transactions_total{listener="mx"}')).toBeGreaterThanOrEqual(clamd ? 5 : 4);
    expect(sample(text, 'ichidan_transactions_refused_total{listener="mx",reason="drainingMail"}')).toBe(1);
    expect(sample(text, 'ichidan_messages_total{listener="mx",tenant="demo",outcome="accepted",reason=""}')).toBe(3);
    const site = /ichidan_deliveries_total\{tenant="demo",site="([^"]+)",outcome="delivered"\}/.exec(text)?.[1];
    expect(site).toBeDefined();
    expect(sample(text, `ichidan_deliveries_total{tenant="demo",site="${site}",outcome="delivered"}`)).toBeGreaterThanOrEqual(1);
    expect(sample(text, `ichidan_deliveries_total{tenant="demo",site="${site}",outcome="bounced"}`)).toBe(1);
    expect(sample(text, `ichidan_deliveries_total{tenant="demo",site="${site}",outcome="deferred"}`)).toBeGreaterThanOrEqual(1);
    expect(sample(text, 'ichidan_deferrals_total{tenant="demo",class="quota"}')).toBeGreaterThanOrEqual(1);
    expect(sample(text, 'ichidan_bounces_total{tenant="demo",class="bad-mailbox"}')).toBe(1);
    expect(sample(text, 'ichidan_queue_oldest_seconds{tenant="demo",state="queued"}')).toBeGreaterThanOrEqual(0);
    expect(sample(text, `ichidan_outbound_sessions_total{site="${site}",tls="TLSv1.3"}`)).toBeGreaterThanOrEqual(1);
    expect(sample(text, 'ichidan_disk_free_bytes{volume="spool"}')).toBeGreaterThan(0);
    expect(sample(text, 'ichidan_disk_free_bytes{volume="database"}')).toBeGreaterThan(0);
    expect(sample(text, 'process_cpu_seconds_total')).toBeGreaterThan(0);
    expect(text).toMatch(/^nodejs_eventloop_lag_p99_seconds \d/m);
    if (clamd) {
      expect(sample(text, 'ichidan_messages_total{listener="mx",tenant="demo",outcome="refused",reason="scan"}')).toBe(1);
      expect(sample(text, 'ichidan_scan_verdicts_total{engine="clamav",verdict="infected"}')).toBe(1);
      expect(sample(text, 'ichidan_scan_verdicts_total{engine="clamav",verdict="clean"}')).toBe(3);
      expect(sample(text, 'ichidan_scan_seconds_count{engine="clamav"}')).toBe(4);
    }
    // Every metric an existing test or alert names is still there.
    for (const name of ['ichidan_engine_up', 'ichidan_deliveries_in_flight', 'ichidan_queue_free_bytes', 'ichidan_spool_fsync_seconds', 'ichidan_admission_level']) {
      expect(text).toContain(`# TYPE ${name} `);
    }
  });

  it('keeps /metrics behind the token', async () => {
    expect((await get(t, '/metrics')).status).toBe(401);
  });

  it('names in the Grafana dashboard only metrics the process exports', async () => {
    const text = await scrape(t);
    const families = new Map<string, string>();
    for (const m of text.matchAll(/^# TYPE (\S+) (\S+)$/gm)) families.set(m[1], m[2]);
    const dashboard = JSON.parse(readFileSync(DASHBOARD, 'utf8')) as { panels: Array<{ title: string; targets: Array<{ expr: string }> }> };
    const named = new Set<string>();
    for (const panel of dashboard.panels) {
      expect(panel.targets.length, panel.title).toBeGreaterThan(0);
      for (const { expr } of panel.targets) {
        const names = [...expr.matchAll(/\b((?:ichidan|process|nodejs)_[a-z0-9_]+)/g)].map((m) => m[1]);
        expect(names.length, expr).toBeGreaterThan(0);
        for (const name of names) named.add(name);
      }
    }
    for (const name of named) {
      const family = families.has(name) ? name : name.replace(/_(bucket|sum|count)$/, '');
      expect(families.has(family), `${name} in the dashboard is not exported`).toBe(true);
      if (family !== name) expect(families.get(family)).toBe('histogram');
    }
    expect(named.size).toBeGreaterThanOrEqual(10);
  });

  it('logs the start, each session by its id, TLS, AUTH, the Message-ID, the address delivered to and the next retry', { timeout: 30_000 }, async () => {
    const started = t.logs.find((l) => l.msg === 'started');
    expect(started).toMatchObject({ version: JSON.parse(readFileSync(join(import.meta.dirname, '..', 'package.json'), 'utf8')).version, generation: 1 });
    expect(started).toHaveProperty('config');

    const queued = t.logs.find((l) => l.msg === 'queued' && l.messageId === '<ok-1@example.test>');
    expect(queued).toBeDefined();
    const session = queued!.session as string;
    expect(session).toMatch(/\S+/);
    expect(t.logs.find((l) => l.msg === 'connect' && l.session === session)).toMatchObject({ listener: 'mx', client: '127.0.0.1' });
    expect(t.logs.find((l) => l.msg === 'disconnect' && l.session === session)).toMatchObject({ listener: 'mx' });

    const deferred = t.logs.find((l) => l.msg === 'delivery attempt' && l.verdict === 'deferred')!;
    expect(Date.parse(deferred.next as string)).toBeGreaterThan(Date.now() - 60_000);
    const delivered = t.logs.find((l) => l.msg === 'delivery attempt' && l.verdict === 'delivered')!;
    expect(delivered.host).toMatch(/\[127\.0\.0\.2\]:\d+$/);
    const outbound = t.logs.find((l) => l.msg === 'outbound session')!;
    expect(outbound).toMatchObject({ tenant: 'demo', address: '127.0.0.2', protocol: 'TLSv1.3' });
    expect(outbound.cipher).toMatch(/^TLS_/);
    expect(outbound.session).toMatch(/\S+/);
    expect(t.logs.find((l) => l.msg === 'delivery attempt' && l.session === outbound.session)).toBeDefined();

    const c = await submissionSession(t);
    try {
      expect(await c.command(authPlain('ann@example.test', TEST_PASSWORD))).toMatch(/^235 /);
    } finally {
      c.socket.destroy();
    }
    await waitUntil(() => t.logs.some((l) => l.msg === 'authenticated' && l.user === 'ann@example.test'), 5_000, 'the AUTH line');
    const auth = t.logs.find((l) => l.msg === 'authenticated')!;
    expect(t.logs.find((l) => l.msg === 'tls' && l.session === auth.session)).toMatchObject({ listener: 'submission', protocol: 'TLSv1.3' });
    expect(t.logs.find((l) => l.msg === 'tls' && l.session === auth.session)!.cipher).toMatch(/^TLS_/);
  });
});

describe('health and readiness', () => {
  let t: TestApp;
  let sink: Sink;

  beforeAll(async () => {
    sink = await startSink({ host: '127.0.0.2' });
    t = await startApp(demoConfig(sink, { admin: { port: 0, token: TOKEN } }));
  });
  afterAll(async () => {
    await t?.stop();
    await sink?.close();
  });

  const ready = async () => {
    const r = await get(t, '/readyz');
    return { status: r.status, body: JSON.parse(r.text) as { ready: boolean; checks: Record<string, { ok: boolean; detail?: string }> } };
  };

  it('answers /healthz and /readyz without the token, to any Host', async () => {
    expect(await get(t, '/healthz')).toMatchObject({ status: 200, text: '{"alive":true}\n' });
    expect(await get(t, '/healthz', { host: 'probe.example' })).toMatchObject({ status: 200 });
    const r = await ready();
    expect(r).toMatchObject({ status: 200, body: { ready: true } });
    expect(Object.keys(r.body.checks).sort()).toEqual(['database', 'disk', 'draining', 'listeners', 'spool']);
    // Only GET is open: anything else still needs the token.
    await new Promise<void>((resolve, reject) => {
      request({ host: '127.0.0.1', port: t.app.adminPort!, path: '/readyz', method: 'POST', headers: { 'content-type': 'application/json' } }, (res) => {
        expect(res.statusCode).toBe(401);
        res.resume();
        resolve();
      }).on('error', reject).end('{}');
    });
  });

  it('is not ready while drained, and ready again after', async () => {
    t.app.draining = true;
    try {
      const r = await ready();
      expect(r.status).toBe(503);
      expect(r.body).toMatchObject({ ready: false, checks: { draining: { ok: false, detail: 'this node is drained' }, listeners: { ok: true } } });
    } finally {
      t.app.draining = false;
    }
    expect((await ready()).status).toBe(200);
  });

  it('is not ready while the spool folder cannot be written, and says so', async () => {
    // Root may write in any folder whatever its mode: the spool is replaced by a file instead.
    const spool = join(t.dataDir, 'spool');
    await rename(spool, `${spool}.away`);
    await writeFile(spool, 'not a folder');
    try {
      const r = await ready();
      expect(r.status).toBe(503);
      expect(r.body.checks.spool.ok).toBe(false);
      expect(r.body.checks.spool.detail).toMatch(/ENOTDIR/);
      // The route needs no token: it names no path.
      expect(JSON.stringify(r.body)).not.toContain(t.dataDir);
      expect(r.body.checks.database.ok).toBe(true);
    } finally {
      await rm(spool);
      await rename(`${spool}.away`, spool);
    }
    expect((await ready()).status).toBe(200);
  });
});

describe('label cardinality', () => {
  it('stays bounded with 1,000 random recipient domains', { timeout: 180_000 }, async () => {
    // Every name is NXDOMAIN here: each domain is a site of its own ("domain:NAME"), answered without a connection.
    const dns = await startDns({});
    const box = await startSink({ host: '127.0.0.2' });
    const t = await startApp((dir) => baseConfig(dir, {
      listeners: [{ name: 'mx', role: 'mx', port: 0, tls: 'none' }],
      admin: { port: 0, token: TOKEN },
      dns: { servers: [dns.server] },
      tenants: { shop: { networks: ['127.0.0.1/32'] } },
      routes: { 'shop.test': { host: '127.0.0.2', port: box.port } },
      delivery: { mtaSts: { enabled: false } },
    }));
    const transport = nodemailer.createTransport({ host: '127.0.0.1', port: t.port('mx'), ignoreTLS: true });
    try {
      for (let m = 0; m < 10; m++) {
        const to = Array.from({ length: 100 }, () => `user@${randomBytes(5).toString('hex')}.example`);
        await transport.sendMail({ envelope: { from: 'sender@shop.test', to }, raw: 'Subject: many\r\n\r\nhello\r\n' });
      }
      const series = (text: string) => text.split('\n').filter((l) => l.startsWith('ichidan_deliveries_total{'));
      let text = '';
      await waitUntil(async () => {
        text = await scrape(t);
        return series(text).filter((l) => !l.includes('site="route:')).reduce((n, l) => n + Number(l.split(' ').pop()), 0) >= 1000;
      }, 150_000, 'an outcome for each of the 1,000 recipients');
      // Named sites (none here) as they are, 50 others, then _other; the DSNs' route to shop.test besides.
      expect(series(text).length).toBeLessThanOrEqual(3 * (SITE_LABELS_MAX + 2));
      expect(new Set(series(text).map((l) => /site="([^"]+)"/.exec(l)![1])).size).toBeLessThanOrEqual(SITE_LABELS_MAX + 2);
      expect(text).toMatch(/ichidan_deliveries_total\{tenant="shop",site="_other",outcome="(bounced|deferred)"\} \d{3}/);
      expect(text.split('\n').filter((l) => l.startsWith('ichidan_messages_total{')).length).toBe(1);
    } finally {
      transport.close();
      await t.stop();
      await box.close();
      await dns.close();
    }
  });
});
