// The web dashboard in a real browser (Debian's chromium through playwright-core) against a running
// Ichidan with real traffic — mail delivered, deferred, bounced and quarantined by the policy
// engine, a sink that defers: a wrong token is refused at login; every page renders under the
// strict CSP with no console error; the overview charts the sampler's points; queue actions,
// an egress undo and a quarantine release change what the API reports; quarantined text containing
// <script> is shown as text; a cross-site change without the CSRF token is refused.
// Every page is screenshotted (rendering is part of the test); with ICHIDAN_SCREENSHOTS=1 the
// pictures replace docs/dashboard/ (the README shows them), else they go to a temporary folder.
import { mkdir } from 'node:fs/promises';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { baseConfig, demoConfig, startApp, waitUntil, type TestApp } from './helpers/app.js';
import { browserSupport, openBrowser, watch, type TestBrowser } from './helpers/browser.js';
import { redisSupport, startRedis, type TestRedis } from './helpers/redis.js';
import { qidOf, sendRaw } from './helpers/send-raw.js';
import { startSink, type Sink } from './helpers/sink.js';

const support = browserSupport();
const TOKEN = 'dashboard-test-token-0123456789';
const SHOTS = process.env.ICHIDAN_SCREENSHOTS === '1'
  ? join(import.meta.dirname, '..', 'docs', 'dashboard')
  : join(tmpdir(), `ichidan-dashboard-shots-${process.pid}`);

const plain = (to: string, subject: string) => `From: alice@sender.test\r\nTo: ${to}\r\nSubject: ${subject}\r\nMessage-ID: <${subject.replace(/\W/g, '')}@sender.test>\r\n\r\nHello ${to}\r\n`;
const SCRIPTED = '<script>window.pwned = 1</script><b>not bold</b>';
const quarantined = [
  'From: mallory@sender.test', 'To: carol@example.test', 'Subject: invoice <script>1</script>', 'MIME-Version: 1.0',
  'Content-Type: multipart/mixed; boundary="b1"', '', '--b1', 'Content-Type: text/plain', '', `Please run it. ${SCRIPTED}`, '',
  '--b1', 'Content-Type: application/octet-stream; name="setup.exe"', 'Content-Disposition: attachment; filename="setup.exe"',
  'Content-Transfer-Encoding: base64', '', Buffer.from('MZ\x90\x00\x03\x00\x00\x00padding').toString('base64'), '--b1--', '',
].join('\r\n');

describe.skipIf(!support.ok)(`the dashboard in chromium${support.ok ? '' : ` (skipped: ${support.reason})`}`, () => {
  let sink: Sink;
  let t: TestApp;
  let browser: TestBrowser;
  let page: Page;
  let problems: string[];
  let base: string;
  const ids: Record<string, string> = {};

  const api = async (method: string, path: string, body?: unknown) => {
    const res = await fetch(base + path, {
      method, headers: { authorization: `Bearer ${TOKEN}`, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    return { status: res.status, body: await res.json() as Record<string, any> };
  };
  const shot = (name: string) => page.screenshot({ path: join(SHOTS, `${name}.png`), type: 'png' });
  const open = async (hash: string) => {
    await page.evaluate((h) => { location.hash = h; }, hash);
    await page.waitForFunction((h) => document.getElementById('page')?.dataset.ready === h, hash);
  };

  beforeAll(async () => {
    await mkdir(SHOTS, { recursive: true });
    sink = await startSink({
      host: '127.0.0.2',
      rcpt: (address) => {
        if (address.startsWith('defer')) return { code: 451, text: '4.2.0 mailbox busy, try later' };
        if (address.startsWith('gone')) return { code: 550, text: '5.1.1 no such user' };
        return undefined;
      },
    });
    t = await startApp(demoConfig(sink, {
      admin: { port: 0, token: TOKEN, dashboard: { sample: '1s' } },
      engines: [{ name: 'attachments', type: 'policy', action: 'quarantine' }],
      queue: { retryInitial: '10m', retryMax: '1h', retryJitter: 0 },
    }));
    base = `http://127.0.0.1:${t.app.adminPort}`;
    for (const [name, to] of [['delivered', 'ok@example.test'], ['deferred', 'defer1@example.test'], ['deferred2', 'defer2@example.test'], ['bounced', 'gone@example.test']]) {
      const res = await sendRaw(t, plain(to, name), { to });
      expect(res.ok, res.reply).toBe(true);
      ids[name] = qidOf(res.reply);
    }
    const q = await sendRaw(t, quarantined, { from: 'mallory@sender.test', to: 'carol@example.test' });
    expect(q.ok, q.reply).toBe(true);
    ids.quarantined = qidOf(q.reply);
    await sink.waitFor(1);
    await waitUntil(() => (sink.rcptAttempts.get('defer2@example.test') ?? 0) >= 1, 20_000, 'the deferrals');
    // The sampler's points and the engine's day are there before the pages are looked at.
    await waitUntil(async () => (await api('GET', '/v1/history')).body.points.some((p: { accepted: number }) => p.accepted > 0), 20_000, 'sampled traffic');
    await waitUntil(async () => (await api('GET', '/v1/engines/stats')).body.rows.length > 0, 20_000, 'engine statistics');
    browser = await openBrowser();
    page = await browser.context.newPage();
    page.on('dialog', (d) => void d.accept());
    problems = watch(page);
  }, 120_000);

  afterAll(async () => {
    await browser?.close();
    await t?.stop();
    await sink?.close();
  });

  it('refuses a wrong token, then logs in with admin.token into an HttpOnly, SameSite=Strict session', async () => {
    const res = await page.goto(`${base}/dashboard/`);
    const csp = res!.headers()['content-security-policy'];
    expect(csp).toContain("default-src 'none'");
    expect(csp).toContain("script-src 'self'");
    expect(csp).toContain("frame-ancestors 'none'");
    expect(csp).not.toContain('unsafe-inline');
    expect(res!.headers()['x-content-type-options']).toBe('nosniff');
    await page.fill('#token', 'not-the-token-at-all');
    await page.click('#login button[type=submit]');
    await expect.poll(() => page.textContent('#login-error')).toBe('wrong token');
    expect(await page.isVisible('#nav')).toBe(false);
    await shot('login');
    await page.fill('#token', TOKEN);
    await page.click('#login button[type=submit]');
    await page.waitForSelector('#nav', { state: 'visible' });
    const [cookie] = await browser.context.cookies();
    expect(cookie).toMatchObject({ name: 'ichidan_session', httpOnly: true, sameSite: 'Strict' });
    expect(await page.evaluate(() => document.cookie)).toBe('');
  });

  it('overview: the charts are drawn from the sampler\'s points', async () => {
    await open('#/overview');
    await page.waitForSelector('.chart canvas');
    const charts = await page.$$eval('.chart', (boxes) => boxes.map((b) => ({ title: b.getAttribute('data-chart'), points: Number(b.getAttribute('data-points')), canvas: b.querySelector('canvas') !== null })));
    expect(charts.map((c) => c.title)).toEqual(['Messages per minute', 'Queue depth per tenant', 'Queue depth per site', 'Pressure level']);
    for (const c of charts) expect(c.points, c.title!).toBeGreaterThan(0);
    expect(charts.every((c) => c.canvas)).toBe(true);
    await shot('overview');
  });

  it('queue: a filter finds the deferred message; flush, hold, release, bounce and delete each change it', async () => {
    const message = async (id: string) => api('GET', `/v1/queue/messages/${id}`);
    const states = async (id: string) => ((await message(id)).body.recipients as Array<{ state: string }>).map((r) => r.state);
    await open('#/queue');
    await page.fill('#queue-filters input[name=recipient]', 'defer1@example.test');
    await page.fill('#queue-filters input[name=tenant]', 'demo');
    await page.click('#queue-filters button[type=submit]');
    await page.waitForFunction(() => (document.getElementById('page')?.dataset.ready ?? '').includes('recipient='));
    const listed = await page.$$eval('#queue-table tbody tr', (rows) => rows.map((r) => r.textContent ?? ''));
    expect(listed).toHaveLength(1);
    expect(listed[0]).toContain(ids.deferred);
    expect(listed[0]).toContain('451');
    await shot('queue');
    await page.click(`a[href="#/message/${ids.deferred}"]`);
    await page.waitForFunction((h) => document.getElementById('page')?.dataset.ready === h, `#/message/${ids.deferred}`);
    expect(await page.textContent('#attempts')).toContain('451');
    expect(await page.textContent('#headers')).toContain('Message-ID');
    await shot('message');
    // The attempt's session: its stored transcript, the destination's 451 in it.
    await page.click('#sessions a');
    await page.waitForFunction(() => (document.getElementById('page')?.dataset.ready ?? '').startsWith('#/transcript/'));
    expect(await page.textContent('#transcript')).toMatch(/S: 451 4\.2\.0 mailbox busy/);
    await open(`#/message/${ids.deferred}`);
    const click = async (action: string) => {
      const before = await page.textContent('#status');
      await page.click(`button[data-action=${action}]`);
      await expect.poll(() => page.textContent('#status')).not.toBe(before);
      expect(await page.getAttribute('#status', 'class')).toBe('ok');
    };
    const tried = sink.rcptAttempts.get('defer1@example.test')!;
    await click('flush');
    await waitUntil(() => sink.rcptAttempts.get('defer1@example.test')! > tried, 10_000, 'the flushed attempt');
    await click('hold');
    expect(await states(ids.deferred)).toEqual(['held']);
    await click('release');
    expect(await states(ids.deferred)).toEqual(['queued']);
    await click('bounce');
    await waitUntil(async () => (await message(ids.deferred)).status === 404 || (await states(ids.deferred))[0] === 'bounced', 10_000, 'the bounce');
    await open(`#/message/${ids.deferred2}`);
    await click('delete');
    await page.waitForFunction(() => document.getElementById('page')?.dataset.ready === '#/queue');
    expect(await page.textContent('#status')).toContain('delete');
    await waitUntil(async () => (await message(ids.deferred2)).status === 404 || (await states(ids.deferred2)).every((s) => s === 'purged'), 10_000, 'the deletion');
  });

  it('engines: state, statistics with the quarantine counted, breaker history', async () => {
    await open('#/engines');
    expect(await page.textContent('#engines-table')).toContain('attachments');
    const stats = await page.textContent('#engine-stats');
    expect(stats).toContain('attachments');
    expect(await page.$$('.chart canvas')).toHaveLength(2);
    await shot('engines');
  });

  it('egress: a hold shows as an event and is undone from the page', async () => {
    const held = await api('POST', '/v1/queue/hold', { tenant: 'demo', reason: 'held for the dashboard test' });
    expect(held.status).toBe(200);
    const event = held.body.event as number;
    await open('#/egress');
    expect(await page.textContent('#egress-events')).toContain('held for the dashboard test');
    expect(await page.textContent('#blocks')).toContain('tenant=demo');
    await shot('egress');
    await page.click(`button[data-undo="${event}"]`);
    await expect.poll(() => page.textContent('#status')).toContain(`undo ${event}`);
    const open_ = await api('GET', '/v1/egress/events?open=1');
    expect(open_.body.events.map((e: { id: number }) => e.id)).not.toContain(event);
    expect((await api('GET', '/v1/egress')).body.blocks).toEqual([]);
  });

  it('quarantine: the preview shows a <script> as text, and a release lets the message go', async () => {
    await open('#/quarantine');
    expect(await page.textContent('#quarantine-table')).toContain(ids.quarantined);
    await page.click(`a[href="#/quarantine/${ids.quarantined}"]`);
    await page.waitForSelector('#preview');
    expect(await page.textContent('#preview')).toContain(SCRIPTED);
    expect(await page.$$('#preview script, #preview b, #headers script')).toHaveLength(0);
    expect(await page.evaluate(() => (window as unknown as { pwned?: number }).pwned)).toBeUndefined();
    expect(await page.textContent('#headers')).toContain('invoice <script>1</script>');
    await shot('quarantine');
    await page.click('button[data-action=release]');
    await expect.poll(() => page.textContent('#status')).toContain('release: released 1');
    await sink.waitFor(2);
    expect(sink.messages.some((m) => m.rcptTo.includes('carol@example.test'))).toBe(true);
    expect((await api('GET', '/v1/quarantine')).body.messages).toEqual([]);
  });

  it('the cluster page is hidden when the node is not clustered', async () => {
    expect(await page.isVisible('#nav-cluster')).toBe(false);
    await open('#/cluster');
    expect(await page.textContent('#nodes')).toContain('(this one)');
  });

  it('a cross-site change without the CSRF token is refused, with the session cookie or without it', async () => {
    const cookie = (await browser.context.cookies())[0];
    const post = (headers: Record<string, string>) => fetch(`${base}/v1/queue/hold`, { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body: JSON.stringify({ tenant: 'demo' }) });
    expect((await post({ cookie: `ichidan_session=${cookie.value}` })).status).toBe(403);
    expect((await post({ cookie: `ichidan_session=${cookie.value}`, 'x-csrf-token': 'guessed' })).status).toBe(403);
    expect((await post({})).status).toBe(401);
    // A page of another site in the same browser, logged in to the dashboard: its form post and its
    // fetches reach the API without the Strict cookie, and a JSON one is stopped at the preflight.
    const attacker = createServer((_req, res) => {
      res.writeHead(200, { 'content-type': 'text/html' });
      res.end(`<form id="f" method="POST" enctype="text/plain" action="${base}/v1/queue/hold"><input name='{"tenant":"demo","x":"' value='"}'></form>`);
    });
    await new Promise<void>((resolve) => attacker.listen(0, '127.0.0.3', resolve));
    const other = await browser.context.newPage();
    await other.goto(`http://127.0.0.3:${(attacker.address() as AddressInfo).port}/`);
    const outcomes = await other.evaluate(async (url) => {
      const tries = [
        { mode: 'no-cors', credentials: 'include', headers: { 'content-type': 'text/plain' } },
        { mode: 'cors', credentials: 'include', headers: { 'content-type': 'application/json' } },
      ] as const;
      const out: string[] = [];
      for (const t of tries) {
        try {
          out.push((await fetch(url, { method: 'POST', body: '{"tenant":"demo"}', ...t })).type);
        } catch (err) {
          out.push(String(err));
        }
      }
      return out;
    }, `${base}/v1/queue/hold`);
    expect(outcomes).toEqual(['opaque', 'TypeError: Failed to fetch']);
    await Promise.all([other.waitForNavigation(), other.evaluate(() => (document.getElementById('f') as HTMLFormElement).submit())]);
    expect(await other.textContent('body')).toContain('a valid bearer token is required');
    await other.close();
    attacker.close();
    expect((await api('GET', '/v1/egress')).body.blocks).toEqual([]);
  });

  it('no page logged a console error or a CSP violation; the only refusal was the wrong token', () => {
    expect(problems).toEqual(['HTTP 401 POST /dashboard/login']);
  });
});

describe.skipIf(!support.ok || !redisSupport().ok)('the dashboard of a clustered node', () => {
  let redis: TestRedis;
  let t: TestApp;
  let browser: TestBrowser;

  beforeAll(async () => {
    redis = await startRedis();
    t = await startApp((dir) => baseConfig(dir, {
      cluster: { redis: redis.url, node: 'dash-n1', heartbeat: '200ms' },
      admin: { port: 0, token: TOKEN, dashboard: { sample: '1s' } },
    }));
    browser = await openBrowser();
  }, 60_000);

  afterAll(async () => {
    await browser?.close();
    await t?.stop();
    await redis?.stop();
  });

  it('shows the cluster page with the nodes the registry knows and Redis\'s health', async () => {
    const page = await browser.context.newPage();
    const problems = watch(page);
    await page.goto(`http://127.0.0.1:${t.app.adminPort}/dashboard/#/cluster`);
    await page.fill('#token', TOKEN);
    await page.click('#login button[type=submit]');
    await page.waitForSelector('#nav-cluster', { state: 'visible' });
    await page.waitForFunction(() => document.getElementById('page')?.dataset.ready === '#/cluster');
    await expect.poll(async () => {
      await page.evaluate(() => window.dispatchEvent(new HashChangeEvent('hashchange')));
      await page.waitForFunction(() => document.getElementById('page')?.dataset.ready === '#/cluster');
      return page.textContent('#nodes');
    }, { timeout: 10_000 }).toContain('dash-n1 (this one)');
    expect(await page.textContent('#content')).toContain(redis.url.replace(/^redis:\/\//, '').split('/')[0]);
    await page.screenshot({ path: join(SHOTS, 'cluster.png'), type: 'png' });
    expect(problems).toEqual([]);
  });
});
