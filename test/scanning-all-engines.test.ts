// Every engine type together on one Ichidan (clamd, ICAP, spamd, rspamd, mailauth, policy), with
// real daemons and a loopback DNS server: clean mail with every engine's headers, each engine's
// test message refused, large messages read whole, DMARC p=reject, per-tenant engines and tagging.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import nodemailer from 'nodemailer';
import { baseConfig, startApp, waitUntil, type TestApp } from './helpers/app.js';
import { realDaemon } from './helpers/daemons.js';
import { startDns, type TestDns } from './helpers/dns-server.js';
import { CLEAN_MAIL, eicarMail, gtubeMail, message } from './helpers/engine-contract.js';
import { readScan, recordsDb } from './helpers/records.js';
import { qidOf, sendRaw } from './helpers/send-raw.js';
import { startSink, type Sink } from './helpers/sink.js';

const clamd = realDaemon('clamd');
const spamd = realDaemon('spamd');
const rspamd = realDaemon('rspamd');
const icap = realDaemon('icap');

describe.skipIf(!clamd || !spamd || !rspamd || !icap)('every engine type together (real daemons; skipped unless scripts/engines.sh start has run)', () => {
  let sink: Sink;
  let dns: TestDns;
  let t: TestApp;

  beforeAll(async () => {
    sink = await startSink({ host: '127.0.0.2' });
    dns = await startDns({
      'sender.test': { txt: ['v=spf1 ip4:127.0.0.1 -all'] },
      '_dmarc.sender.test': { txt: ['v=DMARC1; p=none'] },
      'strict.test': { txt: ['v=spf1 ip4:192.0.2.99 -all'] },
      '_dmarc.strict.test': { txt: ['v=DMARC1; p=reject'] },
    });
    t = await startApp((dir) => baseConfig(dir, {
      dns: { servers: [dns.server], timeout: '1s' },
      tenants: {
        demo: { domains: ['example.test'] },
        // A tenant that trials nothing but the attachment policy, with its own spam threshold.
        lax: { domains: ['lax.test'], scanning: { engines: ['attachments'], spam: { reject: null } } },
        // A tenant that tags spam in the Subject instead of refusing it.
        tagged: { domains: ['tagged.test'], scanning: { engines: ['spamassassin'], spam: { reject: null, subjectTag: '[SPAM]' } } },
      },
      routes: {
        'example.test': { host: '127.0.0.2', port: sink.port }, 'lax.test': { host: '127.0.0.2', port: sink.port },
        'tagged.test': { host: '127.0.0.2', port: sink.port },
      },
      engines: [
        { name: 'clamav', type: 'clamd', servers: [{ host: clamd!.host, port: clamd!.port }] },
        { name: 'icap-av', type: 'icap', server: { host: icap!.host, port: icap!.port }, service: icap!.service! },
        { name: 'spamassassin', type: 'spamd', servers: [{ host: spamd!.host, port: spamd!.port }] },
        { name: 'rspamd', type: 'rspamd', url: `http://${rspamd!.host}:${rspamd!.port}` },
        { name: 'auth', type: 'mailauth' },
        { name: 'attachments', type: 'policy' },
      ],
      // Either spam engine alone decides: GTUBE must be refused through each of them.
      scanning: { spam: { mode: 'any' } },
    }));
  });
  afterAll(async () => {
    await t?.stop();
    await Promise.all([sink?.close(), dns?.close()]);
  });

  let recorded = 0;
  /** The record of `qid`, or else the newest one, waiting until a new record has been written. */
  const lastScan = async (qidOrNull: string | null) => {
    const rows = recordsDb(t.dataDir);
    try {
      await waitUntil(() => (rows.prepare('SELECT COUNT(*) AS n FROM scans').get() as { n: number }).n > recorded, 5_000, 'a new scan record');
      recorded = (rows.prepare('SELECT COUNT(*) AS n FROM scans').get() as { n: number }).n;
      const row = (qidOrNull ? readScan(rows, qidOrNull) : rows.prepare('SELECT * FROM scans ORDER BY at DESC LIMIT 1').get()) as { action: string; reason: string; runs: string };
      return { ...row, runs: JSON.parse(row.runs) as Array<Record<string, unknown>> };
    } finally {
      rows.close();
    }
  };

  it('passes a clean message through all six engines and delivers it with their headers', async () => {
    const before = sink.messages.length;
    const res = await sendRaw(t, CLEAN_MAIL);
    expect(res.reply).toMatch(/^250 /);
    const [m] = (await sink.waitFor(before + 1)).slice(before);
    const head = m.data.toString().split('\r\n\r\n')[0];
    expect(head).toMatch(/\r\nAuthentication-Results: mx\.ichidan\.test;[\s\S]*spf=pass[\s\S]*smtp\.mailfrom=alice@sender\.test/);
    expect(head).toMatch(/\r\nX-Spam-Status: No, score=[\d.]+ tag=0\.5 reject=1 mode=any engines=spamassassin=[-\d.]+\/5,rspamd=[\d.]+\/15\r\n/);
    expect(head).toMatch(/\r\nX-Virus-Scanned: clean by clamav, icap-av\r\n/);
    const scan = await lastScan(qidOf(res.reply));
    expect(scan.runs.map((r) => `${String(r.engine)}:${String(r.status)}`).sort()).toEqual(
      ['attachments:clean', 'auth:clean', 'clamav:clean', 'icap-av:clean', 'rspamd:clean', 'spamassassin:clean']);
    const versions = Object.fromEntries(scan.runs.map((r) => [r.engine, r.version]));
    expect(versions.clamav).toMatch(/^ClamAV/);
    expect(versions['icap-av']).toMatch(/\S/);
  });

  it.each([
    ['clamd and ICAP', eicarMail(), /^550 5\.7\.1 message refused: virus found \(Eicar-Test-Signature/, ['clamav', 'icap-av']],
    ['spamd and rspamd', gtubeMail(), /^550 5\.7\.1 message refused as spam/, ['spamassassin', 'rspamd']],
  ])('refuses the test message through %s, each engine finding it', async (_what, raw, reply, finders) => {
    const res = await sendRaw(t, raw);
    expect(res.ok).toBe(false);
    expect(res.reply).toMatch(reply);
    const scan = await lastScan(null);
    expect(scan.action).toBe('reject');
    for (const engine of finders) expect(['infected', 'spam']).toContain(scan.runs.find((r) => r.engine === engine)?.status);
  });

  it('scans a message larger than what stays in memory with every engine, each reading it whole', async () => {
    const filler = Array.from({ length: 4_000 }, (_, i) => `line ${i} of a long report that makes this message bigger than 64 KB.`).join('\n');
    const raw = eicarMail().replace('Please see the attached invoice.', filler);
    expect(raw.length).toBeGreaterThan(200_000);
    const res = await sendRaw(t, raw);
    expect(res.reply).toMatch(/^550 5\.7\.1 message refused: virus found/);
    const scan = await lastScan(null);
    const by = Object.fromEntries(scan.runs.map((r) => [r.engine, r.status]));
    // The attachment at the very end is named invoice.com: the policy engine read that far too.
    expect(by).toMatchObject({ clamav: 'infected', 'icap-av': 'infected', attachments: 'violation', auth: 'clean' });
    expect(['clean', 'spam']).toContain(by.rspamd);
  });

  it('refuses an executable attachment through the policy engine', async () => {
    const raw = message({ From: 'alice@sender.test', To: 'bob@example.test', Subject: 'invoice', 'MIME-Version': '1.0', 'Content-Type': 'multipart/mixed; boundary="b"' },
      ['--b', 'Content-Type: text/plain', '', 'see attached', '--b', 'Content-Type: application/octet-stream', 'Content-Disposition: attachment; filename="invoice.pdf.exe"',
        'Content-Transfer-Encoding: base64', '', Buffer.from('not really a program').toString('base64'), '--b--', ''].join('\n'));
    const res = await sendRaw(t, raw);
    expect(res.reply).toMatch(/^550 5\.7\.1 message refused: .*invoice\.pdf\.exe/);
  });

  it('refuses mail failing DMARC under p=reject, from the sender\'s own published records', async () => {
    const raw = message({ From: 'ceo@strict.test', To: 'bob@example.test', Subject: 'wire transfer', 'Message-ID': '<x1@strict.test>', Date: 'Wed, 25 Nov 2026 10:00:00 +0000' }, 'Please pay.\n');
    const tx = nodemailer.createTransport({ host: '127.0.0.1', port: t.port('mx'), ignoreTLS: true });
    const err = await tx.sendMail({ envelope: { from: 'ceo@strict.test', to: ['bob@example.test'] }, raw }).catch((e: { response: string }) => e);
    tx.close();
    expect((err as { response: string }).response).toMatch(/^550 5\.7\.1 message refused: dmarc=fail \(p=reject\) header\.from=strict\.test/);
    expect(dns.queries.map((q) => q.name)).toContain('_dmarc.strict.test');
  });

  it("tags spam in the Subject for a tenant that asks for it, instead of refusing it", async () => {
    const before = sink.messages.length;
    const res = await sendRaw(t, gtubeMail(), { to: 'dave@tagged.test' });
    expect(res.reply).toMatch(/^250 /);
    const [m] = (await sink.waitFor(before + 1)).slice(before);
    const head = m.data.toString().split('\r\n\r\n')[0];
    expect(head).toMatch(/\r\nSubject: \[SPAM\] Cheap watches\r\n/);
    expect(head).toMatch(/\r\nX-Spam-Flag: YES\r\n/);
    expect(head).toMatch(/\r\nX-Spam-Status: Yes, score=[\d.]+ tag=0\.5 mode=any engines=spamassassin=1000\/5\r\n/);
  });

  it('runs a tenant through its own engines only', async () => {
    const before = sink.messages.length;
    const res = await sendRaw(t, gtubeMail(), { to: 'carol@lax.test' });
    expect(res.reply).toMatch(/^250 /);
    const scan = await lastScan(qidOf(res.reply));
    expect(scan.runs.map((r) => r.engine)).toEqual(['attachments']);
    const [m] = (await sink.waitFor(before + 1)).slice(before);
    expect(m.rcptTo).toEqual(['carol@lax.test']);
  });
});
