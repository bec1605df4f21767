// Bounce classes and per-tenant suppression end to end: two tenants relay through one Ichidan
// (each from its own network) to a real sink that refuses some mailboxes; their bounces are
// classified, the hard ones suppressed for the tenant that sent them and no other, refused at RCPT
// (action refuse) or bounced without contacting the destination (action bounce), expired, and
// managed with the built CLI against the running process.
import { execFile } from 'node:child_process';
import { writeFile } from 'node:fs/promises';
import { request } from 'node:http';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { adminRequest, baseConfig, startApp, waitUntil, type TestApp } from './helpers/app.js';
import { CLI } from './helpers/child.js';
import { RawSmtp } from './helpers/raw-smtp.js';
import { startSink, type Sink } from './helpers/sink.js';

/** shop relays from 127.0.0.1, news from 127.0.0.5 (their networks). */
const SHOP = '127.0.0.1';
const NEWS = '127.0.0.5';
const run = promisify(execFile);

describe('bounce classification and suppression', () => {
  let t: TestApp;
  let remote: Sink;
  let senderBox: Sink;
  let cli: string;

  beforeAll(async () => {
    remote = await startSink({
      host: '127.0.0.3',
      rcpt: (address, attempt) => {
        const local = address.split('@')[0];
        if (local.startsWith('hard')) return { code: 550, text: '5.1.1 The email account that you tried to reach does not exist.' };
        if (local.startsWith('later')) return { code: 451, text: '4.3.2 come back later' };
        if (local.startsWith('quota')) return attempt === 1 ? { code: 452, text: '4.2.2 The email account that you tried to reach is over quota.' } : { code: 552, text: '5.2.2 mailbox full' };
        return undefined;
      },
    });
    senderBox = await startSink({ host: '127.0.0.2' });
    t = await startApp((dir) => baseConfig(dir, {
      queue: { retryInitial: '150ms', retryMax: '300ms', retryJitter: 0, maxAge: '1h' },
      tenants: {
        shop: { networks: [`${SHOP}/32`] },
        news: { networks: [`${NEWS}/32`], suppression: { action: 'bounce' } },
      },
      routes: { 'sender.test': { host: '127.0.0.2', port: senderBox.port }, 'remote.test': { host: '127.0.0.3', port: remote.port } },
    }));
    cli = join(t.dataDir, 'cli.yaml');
    await writeFile(cli, `dataDir: ${JSON.stringify(t.dataDir)}\n`);
  });
  afterAll(async () => {
    await t?.stop();
    await remote?.close();
    await senderBox?.close();
  });

  /** One message from `client` to `to`: each RCPT's reply, and the final reply when a recipient was taken. */
  async function send(client: string, to: string[], subject = 'hello'): Promise<{ rcpt: string[]; final: string | null }> {
    const c = await RawSmtp.open(t.port('mx'), '127.0.0.1', client);
    try {
      await c.reply();
      await c.command('EHLO client.test');
      expect(await c.command('MAIL FROM:<me@sender.test>')).toMatch(/^250/);
      const rcpt: string[] = [];
      for (const r of to) rcpt.push(await c.command(`RCPT TO:<${r}>`));
      if (!rcpt.some((r) => r.startsWith('250'))) return { rcpt, final: null };
      expect(await c.command('DATA')).toMatch(/^354/);
      const final = await c.command(`Subject: ${subject}\r\n\r\nbody\r\n.`);
      await c.command('QUIT');
      return { rcpt, final };
    } finally {
      c.socket.destroy();
    }
  }

  const dsnsFor = (address: string) => senderBox.messages.filter((m) => m.data.toString().includes(`Final-Recipient: rfc822; ${address}`));
  const api = (method: string, url: string, body?: unknown) => adminRequest(join(t.dataDir, 'admin.sock'), method, url, body);
  const metrics = () => new Promise<string>((resolve, reject) => {
    request({ socketPath: join(t.dataDir, 'admin.sock'), path: '/metrics' }, (res) => {
      let text = '';
      res.on('data', (c: Buffer) => { text += c; });
      res.on('end', () => resolve(text));
    }).on('error', reject).end();
  });
  const today = () => new Date().toISOString().slice(0, 10);

  it('classifies a 550 5.1.1 as bad-mailbox, bounces it with the remote text, and suppresses it for that tenant', async () => {
    expect((await send(SHOP, ['hard-1@remote.test'])).final).toMatch(/^250/);
    await waitUntil(() => dsnsFor('hard-1@remote.test').length === 1, 10_000, 'the bounce');
    const dsn = dsnsFor('hard-1@remote.test')[0].data.toString();
    // The DSN keeps the destination's words; the class goes to the logs, the metric and the list.
    expect(dsn).toContain('Diagnostic-Code: smtp; 550 5.1.1 The email account that you tried to reach does not exist.');
    expect(dsn).not.toContain('bad-mailbox');
    expect(t.logs.find((l) => l.msg === 'bounced' && l.rcpt === 'hard-1@remote.test')).toMatchObject({ tenant: 'shop', class: 'bad-mailbox' });
    await waitUntil(() => t.logs.some((l) => l.msg === 'recipient suppressed' && l.rcpt === 'hard-1@remote.test'));
    const { body } = await api('GET', '/v1/suppression?tenant=shop');
    expect(body.entries).toEqual([expect.objectContaining({ tenant: 'shop', address: 'hard-1@remote.test', class: 'bad-mailbox', source: 'bounce' })]);
    expect(await metrics()).toMatch(/ichidan_bounces_total\{tenant="shop",class="bad-mailbox"\} 1/);
  });

  it('refuses the same tenant\'s next message to it at RCPT with 550 5.1.1 naming the suppression (action refuse)', async () => {
    const attempts = remote.rcptAttempts.get('hard-1@remote.test');
    const r = await send(SHOP, ['hard-1@remote.test', 'fine@remote.test']);
    expect(r.rcpt[0]).toBe(`550 5.1.1 <hard-1@remote.test>: recipient suppressed after a hard bounce on ${today()} (bad-mailbox)`);
    expect(r.rcpt[1]).toMatch(/^250/);
    await waitUntil(() => remote.messages.some((m) => m.rcptTo.includes('fine@remote.test')));
    expect(remote.rcptAttempts.get('hard-1@remote.test')).toBe(attempts);
  });

  it('lets another tenant\'s mail to the same address go out (and suppresses it for that tenant in turn)', async () => {
    const attempts = remote.rcptAttempts.get('hard-1@remote.test')!;
    expect((await send(NEWS, ['hard-1@remote.test'])).rcpt[0]).toMatch(/^250/);
    await waitUntil(() => remote.rcptAttempts.get('hard-1@remote.test') === attempts + 1, 10_000, 'the destination asked again');
    await waitUntil(() => dsnsFor('hard-1@remote.test').length === 2, 10_000, 'the second bounce');
    await waitUntil(async () => ((await api('GET', '/v1/suppression?tenant=news')).body.entries as unknown[]).length === 1);
  });

  it('accepts and bounces at once, without contacting the destination, under action bounce', async () => {
    await api('POST', '/v1/suppression/add', { tenant: 'news', address: 'stop@remote.test', class: 'bad-mailbox' });
    const connections = remote.connections;
    const r = await send(NEWS, ['stop@remote.test']);
    expect(r.rcpt[0]).toMatch(/^250/);
    expect(r.final).toMatch(/^250/);
    await waitUntil(() => dsnsFor('stop@remote.test').length === 1, 10_000, 'the bounce');
    const dsn = dsnsFor('stop@remote.test')[0].data.toString();
    expect(dsn).toMatch(/Status: 5\.1\.1\r\n/);
    expect(dsn).toContain(`Diagnostic-Code: smtp; 550 5.1.1 <stop@remote.test>: recipient suppressed by an operator on ${today()} (bad-mailbox)`);
    expect(remote.rcptAttempts.has('stop@remote.test')).toBe(false);
    expect(remote.connections).toBe(connections);
    expect(t.logs.find((l) => l.msg === 'bounced' && l.rcpt === 'stop@remote.test')).toMatchObject({ tenant: 'news', class: 'suppressed' });
    expect(t.logs.some((l) => l.msg === 'delivery attempt' && l.rcpt === 'stop@remote.test')).toBe(false);
    expect(await metrics()).toMatch(/ichidan_bounces_total\{tenant="news",class="suppressed"\} 1/);
  });

  it('does not suppress a quota failure (4.2.2, then final 5.2.2) by default', async () => {
    expect((await send(SHOP, ['quota-1@remote.test'])).final).toMatch(/^250/);
    await waitUntil(() => dsnsFor('quota-1@remote.test').length === 1, 10_000, 'the bounce');
    expect(remote.rcptAttempts.get('quota-1@remote.test')).toBe(2);
    expect(t.logs.find((l) => l.msg === 'bounced' && l.rcpt === 'quota-1@remote.test')).toMatchObject({ class: 'quota' });
    expect(((await api('GET', '/v1/suppression?match=quota')).body.entries as unknown[])).toEqual([]);
    expect((await send(SHOP, ['quota-1@remote.test'])).rcpt[0]).toMatch(/^250/);
  });

  it('lets an entry expire', async () => {
    expect((await api('POST', '/v1/suppression/add', { tenant: 'shop', address: 'brief@remote.test', expire: '1s' })).status).toBe(200);
    expect((await send(SHOP, ['brief@remote.test'])).rcpt[0]).toMatch(/^550 5\.1\.1 <brief@remote\.test>: recipient suppressed by an operator/);
    await new Promise((r) => setTimeout(r, 1100));
    expect((await send(SHOP, ['brief@remote.test'])).rcpt[0]).toMatch(/^250/);
  });

  it('lists, adds, removes and imports with the CLI against the running process', { timeout: 90_000 }, async () => {
    const ichidan = (...args: string[]) => run(process.execPath, [CLI, 'suppression', ...args, '-c', cli]);
    expect((await ichidan('add', '--tenant', 'shop', 'Manual@Remote.test', '--class', 'policy', '--reason', 'asked to stop')).stdout).toMatch(/^shop: Manual@Remote\.test suppressed until /);
    const file = join(t.dataDir, 'import.csv');
    await writeFile(file, 'email,name\n"one@remote.test",One\n# a comment\n\n<two@remote.test>;Two\none@remote.test,again\n');
    expect((await ichidan('import', '--tenant', 'shop', file, '--expire', '0')).stdout).toBe('shop: 2 addresses imported\n');
    const listed = JSON.parse((await ichidan('list', '--tenant', 'shop', '--json')).stdout) as Array<{ address: string; class: string; source: string; expires_at: number | null; reason: string }>;
    expect(listed.map((e) => e.address).sort()).toEqual(['hard-1@remote.test', 'manual@remote.test', 'one@remote.test', 'two@remote.test']);
    expect(listed.find((e) => e.address === 'manual@remote.test')).toMatchObject({ class: 'policy', source: 'operator', reason: 'asked to stop' });
    expect(listed.find((e) => e.address === 'two@remote.test')).toMatchObject({ class: 'bad-mailbox', source: 'import', expires_at: null });
    const text = (await ichidan('list', '--class', 'policy')).stdout.split('\n');
    expect(text[0]).toBe('tenant\taddress\tclass\tsource\tsince\texpires\treason');
    expect(text[1]).toMatch(/^shop\tmanual@remote\.test\tpolicy\toperator\t\S+\t\S+\tasked to stop$/);
    expect((await send(SHOP, ['two@remote.test'])).rcpt[0]).toMatch(/^550 5\.1\.1 <two@remote\.test>: recipient suppressed by an import on /);
    expect((await ichidan('remove', '--tenant', 'shop', 'two@remote.test')).stdout).toBe('shop: two@remote.test no longer suppressed\n');
    expect((await send(SHOP, ['two@remote.test'])).rcpt[0]).toMatch(/^250/);
    // Failures: a tenant the config does not name, an entry that is not there, a class that does not exist.
    await expect(ichidan('add', '--tenant', 'nobody', 'x@remote.test')).rejects.toMatchObject({ code: 1, stderr: expect.stringContaining('no tenant "nobody"') });
    await expect(ichidan('remove', '--tenant', 'shop', 'two@remote.test')).rejects.toMatchObject({ code: 1, stderr: expect.stringContaining('tenant shop has no suppression for two@remote.test') });
    await expect(ichidan('add', '--tenant', 'shop', 'x@remote.test', '--class', 'grumpy')).rejects.toMatchObject({ code: 1, stderr: expect.stringContaining('"class" must be one of') });
    await expect(ichidan('add', '--tenant', 'shop', 'not-an-address')).rejects.toMatchObject({ code: 1, stderr: expect.stringContaining('"address" must be an address') });
    await expect(ichidan('import', '--tenant', 'shop', join(t.dataDir, 'missing.csv'))).rejects.toMatchObject({ code: 1, stderr: expect.stringContaining('cannot read') });
    await writeFile(join(t.dataDir, 'empty.csv'), 'email\n# none yet\n');
    await expect(ichidan('import', '--tenant', 'shop', join(t.dataDir, 'empty.csv'))).rejects.toMatchObject({ code: 2, stderr: expect.stringContaining('no addresses found') });
  });

  it('shows bounced recipients by class where `ichidan queue` shows the queue', async () => {
    expect((await send(SHOP, ['hard-2@remote.test', 'later@remote.test'])).final).toMatch(/^250/);
    await waitUntil(() => t.logs.some((l) => l.msg === 'bounced' && l.rcpt === 'hard-2@remote.test'));
    // The message stays in the queue for its deferred recipient, so its bounced one is still shown.
    const { stdout } = await run(process.execPath, [CLI, 'queue', '-c', cli]);
    expect(stdout).toContain('bounced\tshop\tbad-mailbox\t1\n');
    expect(stdout).toMatch(/^shop\tqueued\t1$/m);
  });

  it('refuses a bad admin request with 400 naming the field, and changes nothing', async () => {
    const before = ((await api('GET', '/v1/suppression')).body.entries as unknown[]).length;
    const bad: Array<[string, unknown, RegExp]> = [
      ['/v1/suppression/import', { tenant: 'shop', addresses: [] }, /"addresses" must be a list of 1 to 500/],
      ['/v1/suppression/import', { tenant: 'shop', addresses: ['ok@remote.test', 'no at sign'] }, /"addresses\[1\]" must be an address/],
      ['/v1/suppression/add', { tenant: 'shop', address: 'ok@remote.test', expire: 'soon' }, /"expire" must be a duration/],
      ['/v1/suppression/add', { address: 'ok@remote.test' }, /"tenant" is required/],
      ['/v1/suppression/remove', { tenant: 'shop', address: 42 }, /"address" must be an address/],
    ];
    for (const [url, body, error] of bad) {
      const res = await api('POST', url, body);
      expect(res.status, url).toBe(400);
      expect(String(res.body.error)).toMatch(error);
    }
    expect((await api('GET', '/v1/suppression?limit=0')).status).toBe(400);
    expect((await api('GET', '/v1/suppression?tenant=nobody')).status).toBe(400);
    expect(((await api('GET', '/v1/suppression')).body.entries as unknown[]).length).toBe(before);
  });
});
