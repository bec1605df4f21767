// The queue message by message, with real deliveries: the admin API's list (and its filters),
// show and why for deferred, held and bounced messages; flush makes a deferred message go now;
// bounce yields a DSN to the sender; delete while the daemon runs (an attempt under way too);
// the CLI's list, show, why and sessions read the database with the daemon stopped; an unknown id
// is exit 1 with one line.
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import nodemailer from 'nodemailer';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { adminRequest, adminSocket, baseConfig, startApp, waitUntil, type TestApp } from './helpers/app.js';
import { CLI } from './helpers/child.js';
import { scripted } from './helpers/scripted-rcpt.js';
import { startSink, type Sink } from './helpers/sink.js';

const exec = promisify(execFile);

interface Listed { id: string; state: string; tenant: string; sender: string; ageSeconds: number; size: number; nextAttempt: string | null; lastReply: string | null; recipients: Array<{ address: string; state: string; nextAttempt: string | null; lastReply: string | null }> }

// Each CLI run is a process of its own: slow on a loaded machine.
describe('queue tools per message', { timeout: 180_000 }, () => {
  let t: TestApp;
  let remote: Sink;
  let slow: Sink;
  let senderBox: Sink;
  let dataDir: string;
  let cliConfig: string;
  let stopped = false;

  beforeAll(async () => {
    dataDir = await mkdtemp(join(tmpdir(), 'ichidan-qtools-'));
    remote = await startSink({ host: '127.0.0.3', rcpt: scripted });
    slow = await startSink({ host: '127.0.0.4', replyDelay: 1500 });
    senderBox = await startSink({ host: '127.0.0.2' });
    t = await startApp((dir) => baseConfig(dir, {
      tenants: { acme: { domains: ['acme.test'], networks: ['127.0.0.1/32'] } },
      // One attempt an hour: a deferred message stays deferred until flushed.
      queue: { retryInitial: '1h', retryMax: '2h', retryJitter: 0, maxAge: '2d' },
      routes: {
        'sender.test': { host: '127.0.0.2', port: senderBox.port },
        'remote.test': { host: '127.0.0.3', port: remote.port },
        'slow.test': { host: '127.0.0.4', port: slow.port },
        'held.test': { hold: true },
      },
    }), { dataDir });
    cliConfig = join(dataDir, 'cli.yaml');
    await writeFile(cliConfig, `dataDir: ${JSON.stringify(dataDir)}\nqueue:\n  maxAge: 2d\n`);
  });
  afterAll(async () => {
    if (!stopped) await t?.stop();
    await remote?.close();
    await slow?.close();
    await senderBox?.close();
    await rm(dataDir, { recursive: true, force: true });
  });

  const api = (method: string, url: string, body?: unknown) => adminRequest(adminSocket(t.app.config), method, url, body);
  const ichidan = (...args: string[]) => exec(process.execPath, [CLI, ...args, '-c', cliConfig]);
  const failing = async (...args: string[]) => {
    try {
      await ichidan(...args);
    } catch (err) {
      const e = err as { code: number; stderr: string; stdout: string };
      return { code: e.code, stderr: e.stderr, stdout: e.stdout };
    }
    throw new Error(`ichidan ${args.join(' ')} succeeded`);
  };
  async function send(to: string | string[], subject = 'queue tools'): Promise<string> {
    const mailer = nodemailer.createTransport({ host: '127.0.0.1', port: t.port('mx'), ignoreTLS: true });
    const info = await mailer.sendMail({ from: 'me@sender.test', to, subject, text: 'hello' });
    mailer.close();
    return /queued as ([0-9A-Z]{16})$/.exec(info.response)![1];
  }
  /** `n` recipients' attempts logged, and committed. */
  const attempted = async (qid: string, n = 1) => {
    await waitUntil(() => t.logs.filter((l) => l.qid === qid && l.msg === 'delivery attempt').length >= n, 10_000, `attempt ${n} of ${qid}`);
    await waitUntil(async () => ((await api('GET', `/v1/queue/messages/${qid}`)).body.attempts as unknown[]).length >= n, 5_000, `attempt ${n} of ${qid} committed`);
  };
  const list = async (query = '') => {
    const res = await api('GET', `/v1/queue/messages${query}`);
    expect(res.status).toBe(200);
    return res.body.messages as Listed[];
  };
  const ids = async (query: string) => (await list(query)).map((m) => m.id);
  const dsnsFor = (address: string) => senderBox.messages.filter((m) => m.data.toString().includes(`Final-Recipient: rfc822; ${address}`));

  it('lists a deferred message with its recipients, and filters by tenant, state, sender, recipient and age', async () => {
    const qid = await send('always-soft-list@remote.test');
    await attempted(qid);
    const m = (await list()).find((x) => x.id === qid)!;
    expect(m).toMatchObject({ state: 'deferred', tenant: 'acme', sender: 'me@sender.test' });
    expect(m.size).toBeGreaterThan(0);
    expect(m.ageSeconds).toBeGreaterThanOrEqual(0);
    expect(Date.parse(m.nextAttempt!) - Date.now()).toBeGreaterThan(50 * 60_000);
    expect(m.lastReply).toMatch(/451 4\.3\.2 come back later/);
    expect(m.recipients).toEqual([{ address: 'always-soft-list@remote.test', tenant: 'acme', state: 'queued', attempts: 1, nextAttempt: m.nextAttempt, lastReply: m.lastReply, lastHost: expect.stringContaining('127.0.0.3'), bounceClass: null }]);

    expect(await ids('?state=deferred')).toContain(qid);
    expect(await ids('?state=held')).not.toContain(qid);
    expect(await ids('?tenant=acme')).toContain(qid);
    expect(await ids('?sender=SENDER.test')).toContain(qid);
    expect(await ids('?sender=nobody.test')).not.toContain(qid);
    expect(await ids('?recipient=always-soft-list')).toContain(qid);
    expect(await ids('?recipient=someone-else')).not.toContain(qid);
    expect(await ids('?newerThan=1h')).toContain(qid);
    expect(await ids('?olderThan=1h')).not.toContain(qid);
    expect(await ids('?site=route:127.0.0.3:' + remote.port)).toContain(qid);
    expect(await ids('?site=route:127.0.0.9:25')).not.toContain(qid);
    expect(await list('?limit=1')).toHaveLength(1);
    for (const bad of ['?state=lost', '?limit=0', '?olderThan=soon', '?tenant=nobody', '?site=nowhere']) {
      const res = await api('GET', `/v1/queue/messages${bad}`);
      expect(res.status, bad).toBe(400);
      expect(res.body.error).toBeTruthy();
    }

    const { stdout } = await ichidan('queue', 'list', '--state', 'deferred', '--json');
    expect((JSON.parse(stdout) as { messages: Listed[] }).messages.map((x) => x.id)).toContain(qid);
    const text = await ichidan('queue', 'list', '--recipient', 'always-soft-list');
    expect(text.stdout.split('\n')[0]).toBe('id\tage\ttenant\tsender\trecipients\tsize\tstate\tnext_attempt\tlast_reply');
    expect(text.stdout).toMatch(new RegExp(`^${qid}\\t\\S+\\tacme\\t<me@sender.test>\\talways-soft-list@remote.test\\(queued\\)\\t\\d+\\tdeferred\\t`, 'm'));
    const bad = await failing('queue', 'list', '--older-than', 'soon');
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(/^ichidan: --older-than takes a duration/);
  });

  it('shows a deferred message: envelope, headers, the attempt with its reply, host and session, and why', async () => {
    const qid = await send('always-soft-show@remote.test', 'show me');
    await attempted(qid);
    // The session's transcript is stored a moment after the attempt's outcome.
    await waitUntil(async () => ((await api('GET', `/v1/queue/messages/${qid}`)).body.sessions as unknown[]).length > 0, 5_000, 'the session record');
    const res = await api('GET', `/v1/queue/messages/${qid}`);
    expect(res.status).toBe(200);
    const m = res.body as Record<string, any>;
    expect(m.envelope).toMatchObject({ sender: 'me@sender.test', recipients: [{ address: 'always-soft-show@remote.test', tenant: 'acme' }], client: '127.0.0.1', listener: 'mx' });
    expect(m.headers).toContainEqual({ name: 'Subject', value: 'show me' });
    expect(m.headers.some((h: { name: string }) => h.name === 'Received')).toBe(true);
    expect(m.attempts).toHaveLength(1);
    expect(m.attempts[0]).toMatchObject({ recipient: 'always-soft-show@remote.test', code: 451, status: '4.3.2', host: expect.stringContaining(`127.0.0.3]:${remote.port}`) });
    expect(m.attempts[0].reply).toMatch(/come back later/);
    expect(m.attempts[0].session).toMatch(/^[0-9A-Z]{16}$/);
    expect(m.sessions.map((s: { id: string }) => s.id)).toContain(m.attempts[0].session);
    expect(m).toHaveProperty('scan');
    expect(m.why).toMatch(/always-soft-show@remote\.test was deferred 1 time, the last reply from .*127\.0\.0\.3.*: ".*come back later"; it is next tried at \S+ \(in (59|60)m\), and the queue gives up at \S+ \(in 2d\)/);

    const shown = await ichidan('queue', 'show', qid);
    expect(shown.stdout).toContain('attempts (1):');
    expect(shown.stdout).toContain(`session ${m.attempts[0].session}`);
    expect(shown.stdout).toContain('Subject: show me');
    const why = await ichidan('queue', 'why', qid);
    expect(why.stdout).toMatch(/was deferred 1 time/);
    expect(JSON.parse((await ichidan('queue', 'why', qid, '--json')).stdout)).toMatchObject({ id: qid, why: expect.stringMatching(/deferred 1 time/) });
    const sessions = JSON.parse((await ichidan('sessions', 'list', '--message', qid, '--json')).stdout) as { sessions: Array<{ id: string }> };
    expect(sessions.sessions.map((s) => s.id)).toContain(m.attempts[0].session);
  });

  it('says why a message is held: by an operator, by a route, by a tenant hold at a site', async () => {
    const byRoute = await send('someone@held.test');
    await waitUntil(async () => (await list('?state=held')).some((x) => x.id === byRoute), 10_000, 'the route hold');
    expect((await api('GET', `/v1/queue/messages/${byRoute}`)).body.why).toMatch(/someone@held\.test: held by a route \(routes: hold\) for held\.test since .*, until an operator releases it\./);

    const byOperator = await send('always-soft-held@remote.test');
    await attempted(byOperator);
    expect((await api('POST', '/v1/queue/hold', { message: byOperator })).status).toBe(200);
    const held = (await api('GET', `/v1/queue/messages/${byOperator}`)).body;
    expect(held.state).toBe('held');
    expect(held.why).toMatch(/always-soft-held@remote\.test: held by an operator since .*, until released/);
    expect((await api('POST', '/v1/queue/release', { message: byOperator })).status).toBe(200);

    const site = `route:127.0.0.3:${remote.port}`;
    const hold = await api('POST', '/v1/queue/hold', { tenant: 'acme', site, for: '1h', reason: 'maintenance window' });
    expect(hold.status).toBe(200);
    try {
      const why = (await api('GET', `/v1/queue/messages/${byOperator}`)).body.why as string;
      expect(why).toMatch(new RegExp(`Delivery waits: tenant acme at site ${site.replace(/\./g, '\\.')} is held by an operator until \\S+ \\(in (59|60)m\\) \\(egress event ${String(hold.body.event)}: maintenance window\\)`));
    } finally {
      expect((await api('POST', '/v1/queue/release', { tenant: 'acme', site })).status).toBe(200);
    }
  });

  it('says why a recipient bounced, with its class and the notice', async () => {
    const qid = await send(['hard-why@remote.test', 'always-soft-why@remote.test']);
    await attempted(qid, 2);
    await waitUntil(() => dsnsFor('hard-why@remote.test').length === 1, 10_000, 'the bounce');
    const m = (await api('GET', `/v1/queue/messages/${qid}`)).body as Record<string, any>;
    expect(m.recipients.map((r: { state: string }) => r.state)).toEqual(['bounced', 'queued']);
    expect(m.why).toMatch(/hard-why@remote\.test: bounced \S+ \(\d+s ago\) \(class \S+\) on ".*5\.1\.1 no such user here" from .*127\.0\.0\.3.*; a bounce went to the sender\./);
    expect(m.why).toMatch(/always-soft-why@remote\.test was deferred 1 time/);
    expect(await ids('?state=bounced')).toContain(qid);
  });

  it('flush makes a deferred message go now', async () => {
    const qid = await send('soft-1-flush@remote.test');
    await attempted(qid);
    expect(remote.messages.some((x) => x.rcptTo.includes('soft-1-flush@remote.test'))).toBe(false);
    const started = Date.now();
    const { stdout } = await ichidan('queue', 'flush', qid);
    expect(stdout).toBe(`message ${qid}: 1 recipients flushed (tried now)\n`);
    await waitUntil(() => remote.messages.some((x) => x.rcptTo.includes('soft-1-flush@remote.test')), 10_000, 'the flushed delivery');
    expect(Date.now() - started).toBeLessThan(10_000);
    // Flushed twice: nothing queued is left.
    await waitUntil(async () => (await api('GET', `/v1/queue/messages/${qid}`)).status === 404, 5_000, 'the sweep');
    const again = await failing('queue', 'flush', qid);
    expect(again).toMatchObject({ code: 1, stderr: `ichidan: no message ${qid} in the queue\n` });
  });

  it('flush by tenant and by site answers with how many', async () => {
    expect((await api('POST', '/v1/queue/flush', { site: 'route:127.0.0.9:25' })).body).toEqual({ flushed: 0 });
    const res = await api('POST', '/v1/queue/flush', { tenant: 'nobody' });
    expect(res.status).toBe(400);
  });

  it('bounce fails a message now with a DSN to its sender', async () => {
    const qid = await send('always-soft-bounce@remote.test');
    await attempted(qid);
    const { stdout } = await ichidan('queue', 'bounce', qid, '--reason', 'the customer asked');
    expect(stdout).toMatch(new RegExp(`^message ${qid}: 1 recipients bounced`));
    await waitUntil(() => dsnsFor('always-soft-bounce@remote.test').length === 1, 10_000, 'the operator bounce');
    const dsn = dsnsFor('always-soft-bounce@remote.test')[0];
    expect(dsn.mailFrom).toBe('');
    expect(dsn.rcptTo).toEqual(['me@sender.test']);
    const text = dsn.data.toString();
    expect(text).toMatch(/Action: failed\r\nStatus: 5\.0\.0\r\n/);
    expect(text).toMatch(/Diagnostic-Code: smtp; 550 5\.0\.0 returned to the sender by an operator: the customer asked/);
    await waitUntil(async () => (await api('GET', `/v1/queue/messages/${qid}`)).status === 404, 5_000, 'the bounced message to leave');
    expect(remote.rcptAttempts.get('always-soft-bounce@remote.test')).toBe(1);
  });

  it('delete removes a message without a notice: its spool file and records go, nothing is sent afterwards', async () => {
    const qid = await send('soft-1-delete@remote.test');
    await attempted(qid);
    expect(existsSync(join(dataDir, 'spool', qid))).toBe(true);
    const res = await ichidan('queue', 'delete', qid, '--json');
    expect(JSON.parse(res.stdout)).toEqual({ deleted: 1, inFlight: 0 });
    await waitUntil(async () => (await api('GET', `/v1/queue/messages/${qid}`)).status === 404, 5_000, 'the sweep');
    expect(existsSync(join(dataDir, 'spool', qid))).toBe(false);
    // A flush of everything the tenant has does not bring it back.
    await api('POST', '/v1/queue/flush', { tenant: 'acme' });
    await new Promise((r) => setTimeout(r, 1000));
    expect(remote.messages.some((x) => x.rcptTo.includes('soft-1-delete@remote.test'))).toBe(false);
    expect(dsnsFor('soft-1-delete@remote.test')).toEqual([]);
  });

  it('delete during a delivery attempt: reported as in flight, its outcome not recorded, never tried again', async () => {
    const qid = await send('anyone@slow.test');
    await waitUntil(() => slow.open > 0, 10_000, 'the attempt to start');
    const res = await api('POST', '/v1/queue/delete', { message: qid });
    expect(res).toMatchObject({ status: 200, body: { deleted: 1, inFlight: 1 } });
    // The copy under way may still arrive: it was on the wire when the delete came.
    await waitUntil(() => slow.messages.length > 0, 15_000, 'the copy under way').catch(() => undefined);
    await waitUntil(async () => (await api('GET', `/v1/queue/messages/${qid}`)).status === 404, 15_000, 'the sweep');
    expect(existsSync(join(dataDir, 'spool', qid))).toBe(false);
    const copies = slow.messages.length;
    expect(copies).toBeLessThanOrEqual(1);
    await api('POST', '/v1/queue/flush', { tenant: 'acme' });
    await new Promise((r) => setTimeout(r, 2000));
    expect(slow.messages.length).toBe(copies);
    expect(dsnsFor('anyone@slow.test')).toEqual([]);
  });

  it('an unknown id is exit 1 with one line, for reads and actions; 404 from the API', async () => {
    const commands = ['show', 'why', 'flush', 'bounce', 'delete'];
    const results = await Promise.all(commands.map((c) => failing('queue', c, 'NOSUCHMESSAGE')));
    results.forEach((r, i) => expect(r, commands[i]).toMatchObject({ code: 1, stderr: 'ichidan: no message NOSUCHMESSAGE in the queue\n' }));
    expect(await api('GET', '/v1/queue/messages/NOSUCHMESSAGE')).toEqual({ status: 404, body: { error: 'no message NOSUCHMESSAGE in the queue' } });
    expect((await api('POST', '/v1/queue/bounce', { message: 'NOSUCHMESSAGE' })).status).toBe(404);
  });

  it('reads the queue with the daemon stopped; actions say it is not running', async () => {
    const qid = await send('always-soft-stopped@remote.test');
    await attempted(qid);
    await t.stop();
    stopped = true;
    const listed = JSON.parse((await ichidan('queue', 'list', '--json')).stdout) as { messages: Listed[] };
    expect(listed.messages.find((m) => m.id === qid)).toMatchObject({ state: 'deferred' });
    const shown = JSON.parse((await ichidan('queue', 'show', qid, '--json')).stdout) as { attempts: unknown[]; why: string };
    expect(shown.attempts).toHaveLength(1);
    expect(shown.why).toMatch(/was deferred 1 time/);
    expect((await ichidan('queue', 'why', qid)).stdout).toMatch(/deferred 1 time/);
    const flush = await failing('queue', 'flush', qid);
    expect(flush.code).toBe(1);
    expect(flush.stderr).toMatch(/^ichidan: Ichidan is not running \(no admin socket at .*\)\n$/);
  });
});
