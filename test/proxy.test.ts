// The transparent proxy on loopback: where each connection "was going" is given by the test (as the
// kernel would give it after a redirect: test/proxy-netns.test.ts does that for real), everything
// else is real: swaks and nodemailer as legacy MTAs, sink MX servers, DNS, TLS from a test CA.
import { execFile } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { readdir, readFile } from 'node:fs/promises';
import { createServer, type IncomingMessage } from 'node:http';
import { join } from 'node:path';
import { promisify } from 'node:util';
import Database from 'better-sqlite3';
import nodemailer from 'nodemailer';
import { afterEach, describe, expect, it } from 'vitest';
import type { OriginalDst } from '../mta/proxy/proxy-origdst.js';
import type { ConfigInput } from '../mta/mta-config-schema.js';
import { adminRequest } from '../mta/admin/admin-client.js';
import { xtext } from '../mta/proxy/proxy-listener.js';
import { baseConfig, startApp, waitUntil, type TestApp } from './helpers/app.js';
import { nestedMail } from './helpers/padded-mail.js';
import { RawSmtp } from './helpers/raw-smtp.js';
import { startDns } from './helpers/dns-server.js';
import { startSink, type Sink, type SinkOptions } from './helpers/sink.js';
import { startPolicyServer } from './helpers/policy-server.js';
import { makeTestCa } from './helpers/test-ca.js';

const run = promisify(execFile);
const cleanup: Array<() => Promise<unknown>> = [];
afterEach(async () => {
  for (const c of cleanup.splice(0).reverse()) await c();
});

async function sink(opts: SinkOptions): Promise<Sink> {
  const s = await startSink(opts);
  cleanup.push(() => s.close());
  return s;
}

/** Ichidan with one proxy listener; every client connection "was going" to `dst()`. */
async function proxy(dst: () => OriginalDst | null, extra: (dataDir: string) => Partial<ConfigInput> = () => ({})): Promise<TestApp> {
  const t = await startApp((dataDir) => baseConfig(dataDir, {
    listeners: [{ name: 'proxy', role: 'proxy', port: 0, tls: 'none' }],
    trustedNetworks: ['127.0.0.1/32'],
    queue: { fsync: false },
    ...extra(dataDir),
  }), { originalDst: () => dst() });
  cleanup.push(() => t.stop());
  return t;
}

const to = (s: Sink): OriginalDst => ({ address: s.host, port: s.port, family: 4 });

async function swaks(port: number, args: string[]): Promise<string> {
  const { stdout } = await run('swaks', ['--server', `127.0.0.1:${port}`, '--helo', 'legacy.test', '--hide-informational', ...args]).catch((e: { stdout: string }) => ({ stdout: e.stdout }));
  return stdout;
}

describe('transparent proxy (loopback)', () => {
  it('encodes ESMTP parameter values again as xtext (RFC 3461) when it passes them on', () => {
    expect(xtext('rfc822;john+news@example.com')).toBe('rfc822;john+2Bnews@example.com');
    expect(xtext('a b=c')).toBe('a+20b+3Dc');
    expect(xtext('QWE123')).toBe('QWE123');
  });

  it('relays transactions live: several per connection, the null sender, many recipients, the destination\'s own replies', async () => {
    const mx = await sink({ host: '127.0.0.51', rcpt: (a) => (a.startsWith('nobody@') ? { code: 550, text: '5.1.1 no such user here' } : undefined) });
    const t = await proxy(() => to(mx));
    const transport = nodemailer.createTransport({ host: '127.0.0.1', port: t.port('proxy'), ignoreTLS: true, pool: true, maxConnections: 1, maxMessages: 10 } as never);
    cleanup.push(async () => transport.close());
    const rcpts = Array.from({ length: 30 }, (_, i) => `user${i}@dest.test`);
    const first = await transport.sendMail({ from: 'a@legacy.test', to: [...rcpts, 'nobody@dest.test'], subject: 'many', text: '.leading dot\r\nbody\r\n' });
    expect(first.rejected).toEqual(['nobody@dest.test']);
    expect(first.rejectedErrors?.[0]?.response).toBe('550 5.1.1 no such user here');
    expect(first.response).toBe('250 2.6.0 Ok: sunk');
    await transport.sendMail({ envelope: { from: '', to: 'bounce@dest.test' }, raw: 'Subject: dsn\r\n\r\nnull sender\r\n' });
    await transport.sendMail({ from: 'c@legacy.test', to: 'third@dest.test', text: 'three' });
    await mx.waitFor(3);
    expect(mx.messages.map((m) => m.mailFrom)).toEqual(['a@legacy.test', '', 'c@legacy.test']);
    expect(mx.messages[0].rcptTo).toEqual(rcpts);
    expect(mx.messages[0].data.toString()).toContain('\r\n.leading dot\r\n');
    // one destination connection carried the client's three transactions
    expect(new Set(mx.messages.map((m) => m.connection)).size).toBe(1);
  });

  it('passes a refused sender and a refused message back as the destination gave them; a pipelined transaction then goes through; one destination session serves the three clients in turn', async () => {
    const mx = await sink({ host: '127.0.0.52', mail: (_ip, n) => (n === 1 ? { code: 553, text: '5.7.1 sender not welcome' } : undefined), data: (n) => (n === 1 ? { code: 554, text: '5.7.0 content refused' } : undefined) });
    const t = await proxy(() => to(mx));
    const out = await swaks(t.port('proxy'), ['--from', 'bad@legacy.test', '--to', 'x@dest.test']);
    expect(out).toMatch(/<\*\* 553 5\.7\.1 sender not welcome/);
    const second = await swaks(t.port('proxy'), ['--from', 'good@legacy.test', '--to', 'x@dest.test']);
    expect(second).toMatch(/<\*\* 554 5\.7\.0 content refused/);
    const third = await swaks(t.port('proxy'), ['--from', 'good@legacy.test', '--to', 'x@dest.test', '--pipeline']);
    expect(third).toMatch(/<-  250 2\.6\.0 Ok: sunk/);
    expect(mx.messages).toHaveLength(1);
    // the three client connections were carried by one destination session, kept between them
    expect(mx.connections).toBe(1);
  });

  it('gives the client a 4xx when the destination drops mid-DATA, and refuses loops and connections that were not redirected', async () => {
    const mx = await sink({ host: '127.0.0.53' });
    let dst: OriginalDst | null = { address: '127.0.0.53', port: mx.port, family: 4 };
    const t = await proxy(() => dst);
    // a destination that closes the connection as the data arrives
    const { createServer: tcp } = await import('node:net');
    const dropper = tcp((s) => {
      s.write('220 drop.test ESMTP\r\n');
      s.on('data', (d) => {
        const text = d.toString();
        if (/^EHLO/m.test(text)) s.write('250-drop.test\r\n250 PIPELINING\r\n');
        else if (/^MAIL/m.test(text)) s.write('250 ok\r\n');
        else if (/^RCPT/m.test(text)) s.write('250 ok\r\n');
        else if (/^DATA/m.test(text)) s.write('354 go\r\n');
        else s.destroy();
      });
    });
    await new Promise<void>((r) => dropper.listen(0, '127.0.0.54', () => r()));
    cleanup.push(() => new Promise((r) => dropper.close(r)));
    dst = { address: '127.0.0.54', port: (dropper.address() as { port: number }).port, family: 4 };
    const dropped = await swaks(t.port('proxy'), ['--from', 'a@legacy.test', '--to', 'x@dest.test']);
    expect(dropped).toMatch(/<\*\* 451 4\.4\.2 destination failed: 127\.0\.0\.54:\d+: ECONNRESET/);
    dst = { address: '127.0.0.1', port: t.port('proxy'), family: 4 };
    expect(await swaks(t.port('proxy'), ['--from', 'a@legacy.test', '--to', 'x@dest.test'])).toMatch(/<\*\* 554 5\.4\.6 routing loop/);
    dst = null;
    expect(await swaks(t.port('proxy'), ['--from', 'a@legacy.test', '--to', 'x@dest.test'])).toMatch(/<\*\* 554 5\.4\.6 no original destination/);
    expect(mx.messages).toHaveLength(0);
  });

  it('offers STARTTLS to the client when the listener says so', async () => {
    const mx = await sink({ host: '127.0.0.50' });
    const t = await proxy(() => to(mx), () => ({ listeners: [{ name: 'proxy', role: 'proxy', port: 0, tls: 'starttls' }] }));
    const out = await swaks(t.port('proxy'), ['--tls', '--from', 'a@legacy.test', '--to', 'x@dest.test']);
    expect(out).toMatch(/<-  220 .*TLS/i);
    expect(out).toMatch(/<~  250 2\.6\.0 Ok: sunk/);
    await mx.waitFor(1);
  });

  it('refuses data past the size limit or with a bare LF as the listeners do, breaking off the destination\'s transaction before its final dot', async () => {
    const mx = await sink({ host: '127.0.0.49' });
    const t = await proxy(() => to(mx), () => ({ limits: { maxMessageSize: '4KB' } }));
    const big = await RawSmtp.atData(t.port('proxy'), 'a@legacy.test', ['x@dest.test']);
    big.send(`Subject: big\r\n\r\n${'0123456789abcdef\r\n'.repeat(600)}.\r\n`);
    expect((await big.reply()).join('\n')).toMatch(/^552 5\.3\.4 message too big/);
    big.socket.destroy();
    const bare = await RawSmtp.atData(t.port('proxy'), 'a@legacy.test', ['x@dest.test']);
    bare.send('Subject: bare\r\n\r\none\ntwo\r\n.\r\n');
    expect((await bare.reply()).join('\n')).toMatch(/^550 5\.6\.0 bare CR or LF/);
    bare.socket.destroy();
    await new Promise((r) => setTimeout(r, 300));
    expect(mx.messages).toHaveLength(0);
  });

  it('defers (4xx) when the destination refuses the connection at its banner with a 5xx', async () => {
    const mx = await sink({ host: '127.0.0.48', connect: () => ({ code: 554, text: '5.7.1 your address is listed' }) });
    const t = await proxy(() => to(mx));
    const out = await swaks(t.port('proxy'), ['--from', 'a@legacy.test', '--to', 'x@dest.test']);
    expect(out).toMatch(/<\*\* 451 4\.4\.2 destination failed: 127\.0\.0\.48:\d+: 5\.7\.1 your address is listed \(554\)/);
  });

  it('admits each further transaction of an open session as a delivery: a tenant held meanwhile gets 451 4.7.1', async () => {
    const mx = await sink({ host: '127.0.0.47' });
    const t = await proxy(() => to(mx), () => ({ tenants: { legacy: { networks: ['127.0.0.1/32'] } } }));
    const transport = nodemailer.createTransport({ host: '127.0.0.1', port: t.port('proxy'), ignoreTLS: true, pool: true, maxConnections: 1 } as never);
    cleanup.push(async () => transport.close());
    await transport.sendMail({ from: 'a@legacy.test', to: 'x@dest.test', text: 'first' });
    expect((await adminRequest(join(t.dataDir, 'admin.sock'), 'POST', '/v1/queue/hold', { tenant: 'legacy' })).status).toBe(200);
    const second = await transport.sendMail({ from: 'a@legacy.test', to: 'x@dest.test', text: 'second' }).catch((e: { response: string }) => e);
    expect((second as { response: string }).response).toMatch(/^451 4\.7\.1 held or suspended at addr:127\.0\.0\.47:\d+; try again later/);
    expect(mx.messages).toHaveLength(1);
  });

  it('refuses clients outside the trusted and tenant networks', async () => {
    const mx = await sink({ host: '127.0.0.55' });
    const t = await proxy(() => to(mx), () => ({ trustedNetworks: [] }));
    expect(await swaks(t.port('proxy'), ['--from', 'a@legacy.test', '--to', 'x@dest.test'])).toMatch(/<\*\* 554 5\.7\.1 127\.0\.0\.1 may not use this proxy/);
  });

  it('keeps the destination site within its connection limit with three source MSAs at once, every session waiting its turn', async () => {
    const mx = await sink({ host: '127.0.0.56', replyDelay: 100 });
    const d = await startDns({ 'dest.test': { mx: [{ exchange: 'mx.dest.test', priority: 10 }] }, 'mx.dest.test': { a: ['127.0.0.56'] } });
    cleanup.push(() => d.close());
    const t = await proxy(() => to(mx), () => ({
      trustedNetworks: ['127.0.0.0/8'],
      dns: { servers: [d.server] },
      delivery: { mxPort: mx.port, mtaSts: { enabled: false }, sites: { dest: { domains: ['dest.test'], maxConnections: 2, initialConnections: 2 } } },
      proxy: { slotWait: '20s' },
    }));
    const msas = ['127.0.0.61', '127.0.0.62', '127.0.0.63'];
    await Promise.all(msas.flatMap((ip) => [1, 2].map(async (n) => {
      const tr = nodemailer.createTransport({ host: '127.0.0.1', port: t.port('proxy'), ignoreTLS: true, localAddress: ip } as never);
      await tr.sendMail({ from: `msa${n}@${ip}.test`, to: `r${n}@dest.test`, text: 'capped' });
      tr.close();
    })));
    await mx.waitFor(6);
    expect(mx.peakConnections).toBeLessThanOrEqual(2);
    expect(mx.refused).toBe(0);
    const status = await waitUntil(() => t.app.queue.scheduler.active === 0, 5_000, 'the slots to be given back').then(() => true);
    expect(status).toBe(true);
  });

  it('checks the recipient domain\'s TLS rule on the destination session: verified TLS delivers, a certificate for another name is refused with 4.7.5', async () => {
    const ca = await makeTestCa();
    const good = await ca.issue(['mx.secure.test']);
    const bad = await ca.issue(['elsewhere.test']);
    const mxGood = await sink({ host: '127.0.0.57', ...good });
    const mxBad = await sink({ host: '127.0.0.58', port: mxGood.port, ...bad });
    const d = await startDns({
      'secure.test': { mx: [{ exchange: 'mx.secure.test', priority: 10 }] }, 'mx.secure.test': { a: ['127.0.0.57'] },
      'spoofed.test': { mx: [{ exchange: 'mx.spoofed.test', priority: 10 }] }, 'mx.spoofed.test': { a: ['127.0.0.58'] },
    });
    cleanup.push(() => d.close());
    let dst = to(mxGood);
    const t = await proxy(() => dst, (dataDir) => {
      writeFileSync(join(dataDir, 'ca.pem'), ca.cert);
      return {
      dns: { servers: [d.server] },
      delivery: { mxPort: mxGood.port, mtaSts: { enabled: false }, tls: { caFile: join(dataDir, 'ca.pem') }, tlsPolicy: { 'secure.test': 'require-verified', 'spoofed.test': 'require-verified' }, site: { idleTimeout: '300ms' } },
      };
    });
    const ok = await swaks(t.port('proxy'), ['--from', 'a@legacy.test', '--to', 'x@secure.test']);
    expect(ok).toMatch(/<-  250 2\.6\.0 Ok: sunk/);
    expect(mxGood.messages[0].secure).toBe(true);
    dst = to(mxBad);
    const refused = await swaks(t.port('proxy'), ['--from', 'a@legacy.test', '--to', 'x@spoofed.test']);
    expect(refused).toMatch(/<\*\* 451 4\.7\.5 TLS policy "spoofed\.test" \(require-verified\) for spoofed\.test requires verified TLS: certificate not valid for mx\.spoofed\.test/);
    expect(mxBad.rcptAttempts.size).toBe(0);
    // both sessions' transcripts, with the TLS they used
    await waitUntil(() => {
      const db = new Database(join(t.dataDir, 'queue.db'), { readonly: true });
      try {
        return (db.prepare(`SELECT COUNT(*) AS n FROM connections WHERE ended IS NOT NULL`).get() as { n: number }).n === 2;
      } finally { db.close(); }
    }, 10_000, 'the transcripts');
    const db = new Database(join(t.dataDir, 'queue.db'), { readonly: true });
    const rows = db.prepare(`SELECT host, tls, tenant FROM connections ORDER BY id`).all() as Array<{ host: string; tls: string; tenant: string }>;
    const lines = db.prepare(`SELECT dir, text FROM commands ORDER BY connection_id, seq`).all() as Array<{ dir: string; text: string }>;
    db.close();
    expect(rows.map((r) => r.host)).toEqual(['mx.secure.test', 'mx.spoofed.test']);
    expect(rows.every((r) => /^TLSv1\.[23] /.test(r.tls))).toBe(true);
    expect(lines.map((l) => `${l.dir} ${l.text}`)).toContain('client RCPT TO:<x@secure.test>');
  });

  it('applies MTA-STS enforce per recipient domain: the policy\'s MX with a valid certificate delivers, an MX outside the policy is refused with 4.7.5', async () => {
    const ca = await makeTestCa();
    const mxGood = await sink({ host: '127.0.0.45', ...(await ca.issue(['mx.sts.test'])) });
    const mxOther = await sink({ host: '127.0.0.44', port: mxGood.port, ...(await ca.issue(['mx.other.test'])) });
    const policy = (mx: string) => `version: STSv1\r\nmode: enforce\r\nmx: ${mx}\r\nmax_age: 86400\r\n`;
    const policies = await startPolicyServer('127.0.0.46', await ca.issue(['mta-sts.enforced.test', 'mta-sts.outside.test']), {
      'mta-sts.enforced.test': policy('mx.sts.test'), 'mta-sts.outside.test': policy('mx.sts.test'),
    });
    cleanup.push(() => policies.close());
    const d = await startDns({
      'enforced.test': { mx: [{ exchange: 'mx.sts.test', priority: 10 }] }, 'mx.sts.test': { a: ['127.0.0.45'] },
      'outside.test': { mx: [{ exchange: 'mx.other.test', priority: 10 }] }, 'mx.other.test': { a: ['127.0.0.44'] },
      '_mta-sts.enforced.test': { txt: ['v=STSv1; id=1;'] }, '_mta-sts.outside.test': { txt: ['v=STSv1; id=1;'] },
      'mta-sts.enforced.test': { a: ['127.0.0.46'] }, 'mta-sts.outside.test': { a: ['127.0.0.46'] },
    });
    cleanup.push(() => d.close());
    let dst = to(mxGood);
    const t = await proxy(() => dst, (dataDir) => {
      writeFileSync(join(dataDir, 'ca.pem'), ca.cert);
      return { dns: { servers: [d.server] }, delivery: { mxPort: mxGood.port, tls: { caFile: join(dataDir, 'ca.pem') }, mtaSts: { policyPort: policies.port } } };
    });
    expect(await swaks(t.port('proxy'), ['--from', 'a@legacy.test', '--to', 'x@enforced.test'])).toMatch(/<-  250 2\.6\.0 Ok: sunk/);
    expect(mxGood.messages[0].secure).toBe(true);
    dst = to(mxOther);
    const refused = await swaks(t.port('proxy'), ['--from', 'a@legacy.test', '--to', 'x@outside.test']);
    expect(refused).toMatch(/<\*\* 451 4\.7\.5 MTA-STS policy of outside\.test \(enforce\): no MX host matches its mx patterns \(mx\.sts\.test\); not sent/);
    expect(mxOther.rcptAttempts.size).toBe(0);
  });

  it('scans a tenant\'s proxied mail when asked: a refused message never reaches the destination, a clean one is relayed', async () => {
    const mx = await sink({ host: '127.0.0.60' });
    const t = await proxy(() => to(mx), () => ({
      tenants: { legacy: { networks: ['127.0.0.1/32'] } },
      engines: [{ name: 'attachments', type: 'policy' }],
      proxy: { scan: ['legacy'] },
    }));
    const exe = join(t.dataDir, 'exe.eml');
    writeFileSync(exe, ['From: a@legacy.test', 'To: x@dest.test', 'Subject: invoice', 'MIME-Version: 1.0', 'Content-Type: multipart/mixed; boundary="b"', '',
      '--b', 'Content-Type: text/plain', '', 'see attached', '--b', 'Content-Type: application/octet-stream',
      'Content-Disposition: attachment; filename="invoice.pdf.exe"', 'Content-Transfer-Encoding: base64', '', 'TVqQAAMAAAAEAAAA//8AALgAAAAAAAAAQAAAAAAAAAAA', '--b--', ''].join('\r\n'));
    const refused = await swaks(t.port('proxy'), ['--from', 'a@legacy.test', '--to', 'x@dest.test', '--data', exe]);
    expect(refused).toMatch(/<\*\* 550 5\.7\.1 message refused: .*invoice\.pdf\.exe/);
    const clean = await swaks(t.port('proxy'), ['--from', 'a@legacy.test', '--to', 'x@dest.test', '--body', 'nothing attached']);
    expect(clean).toMatch(/<-  250 2\.6\.0 Ok: sunk/);
    await mx.waitFor(1);
    expect(mx.messages).toHaveLength(1);
    expect(mx.messages[0].data.toString()).toContain('nothing attached');
    const db = new Database(join(t.dataDir, 'queue.db'), { readonly: true });
    await waitUntil(() => (db.prepare(`SELECT COUNT(*) AS n FROM scans`).get() as { n: number }).n === 2, 5_000, 'both scan records');
    const actions = (db.prepare(`SELECT action FROM scans ORDER BY at`).all() as Array<{ action: string }>).map((r) => r.action);
    db.close();
    expect(actions).toEqual(['reject', 'accept']);
    // nothing of either message is left in the spool
    await waitUntil(async () => (await readdir(join(t.dataDir, 'spool'))).filter((f) => f !== 'corrupt').length === 0, 5_000, 'an empty spool');
  });

  it('refuses a scanned tenant\'s proxied message whose structure is past the limits, before the destination sees it', async () => {
    const mx = await sink({ host: '127.0.0.61' });
    const t = await proxy(() => to(mx), () => ({
      tenants: { legacy: { networks: ['127.0.0.1/32'] } },
      engines: [{ name: 'attachments', type: 'policy' }],
      proxy: { scan: ['legacy'] },
    }));
    const deep = join(t.dataDir, 'deep.eml');
    writeFileSync(deep, nestedMail({ name: 'report.pdf', body: '%PDF-1.4' }, 30));
    const refused = await swaks(t.port('proxy'), ['--from', 'a@legacy.test', '--to', 'x@dest.test', '--data', deep]);
    expect(refused).toMatch(/<\*\* 550 5\.6\.0 message refused: MIME nesting deeper than 16 levels/);
    expect(mx.messages).toHaveLength(0);
  });

  it('writes one JSON line per transaction and posts the selected outcomes to a webhook', async () => {
    const mx = await sink({ host: '127.0.0.59', rcpt: (a) => (a.startsWith('no@') ? { code: 550, text: '5.1.1 unknown' } : undefined) });
    const posts: Array<Record<string, unknown>> = [];
    const hook = createServer((req: IncomingMessage, res) => {
      let body = '';
      req.on('data', (c) => { body += c; });
      req.on('end', () => { posts.push(JSON.parse(body)); res.end('ok'); });
    });
    await new Promise<void>((r) => hook.listen(0, '127.0.0.1', () => r()));
    cleanup.push(() => new Promise((r) => hook.close(r)));
    const port = (hook.address() as { port: number }).port;
    const t = await proxy(() => to(mx), (dataDir) => ({ proxy: { eventsFile: join(dataDir, 'proxy.jsonl'), webhook: { url: `http://127.0.0.1:${port}/hook`, on: ['rejected'] } } }));
    await swaks(t.port('proxy'), ['--from', 'a@legacy.test', '--to', 'yes@dest.test']);
    await swaks(t.port('proxy'), ['--from', 'b@legacy.test', '--to', 'no@dest.test']);
    await waitUntil(() => posts.length === 1, 5_000, 'the webhook');
    expect(posts[0].text).toMatch(/^proxy rejected: <b@legacy\.test> → no@dest\.test via 127\.0\.0\.59:\d+ \(tenant _relay\): 550 5\.1\.1 unknown/);
    const events = (await readFile(join(t.dataDir, 'proxy.jsonl'), 'utf8')).trim().split('\n').map((l) => JSON.parse(l));
    expect(events.map((e) => e.outcome)).toEqual(['delivered', 'rejected']);
    expect(events[0]).toMatchObject({ sender: 'a@legacy.test', tenant: '_relay', recipients: [{ address: 'yes@dest.test', reply: expect.stringMatching(/^250/) }], final: expect.stringMatching(/^250 /) });
    expect(events[0].msTo354).toBeGreaterThanOrEqual(0);
  });
});
