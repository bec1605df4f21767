// Scanning end to end: real SMTP clients, real engine daemons, fault-injecting fakes beside them.
import Database from 'better-sqlite3';
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import nodemailer from 'nodemailer';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { readEngineStats, readScan } from '../queue/queue-records-sql.js';
import { readQuarantine } from '../queue/queue-store-sql.js';
import type { ConfigInput } from '../mta/mta-config-schema.js';
import { baseConfig, startApp, waitUntil, type TestApp } from './helpers/app.js';
import { realDaemon } from './helpers/daemons.js';
import { CLEAN_MAIL, eicarMail, gtubeMail, message, startFakeServer, type FakeServer } from './helpers/engine-contract.js';
import { startDns, type TestDns } from './helpers/dns-server.js';
import { fakeClamd } from './helpers/fake-clamd.js';
import { RawSmtp } from './helpers/raw-smtp.js';
import { startSink, type Sink } from './helpers/sink.js';
import { attachmentMail, EXE } from './helpers/padded-mail.js';

const clamd = realDaemon('clamd');
const spamd = realDaemon('spamd');
const rspamd = realDaemon('rspamd');
const icap = realDaemon('icap');

async function send(t: TestApp, raw: string, to = 'bob@example.test'): Promise<{ ok: boolean; reply: string }> {
  const tx = nodemailer.createTransport({ host: '127.0.0.1', port: t.port('mx'), ignoreTLS: true });
  try {
    const info = await tx.sendMail({ envelope: { from: 'alice@sender.test', to: [to] }, raw });
    return { ok: true, reply: info.response };
  } catch (err) {
    return { ok: false, reply: (err as { response?: string }).response ?? String(err) };
  } finally {
    tx.close();
  }
}

const qidOf = (reply: string) => reply.split(' ').pop()!;

function config(sink: Sink, extra: Partial<ConfigInput>) {
  return (dir: string) => baseConfig(dir, {
    tenants: { demo: { domains: ['example.test'] } },
    routes: { 'example.test': { host: '127.0.0.2', port: sink.port } },
    ...extra,
  });
}

function db(t: TestApp): Database.Database {
  return new Database(join(t.dataDir, 'queue.db'), { readonly: true });
}

describe.skipIf(!clamd)('scanning with the real clamd (real daemons; skipped unless scripts/engines.sh start has run)', () => {
  let sink: Sink;
  let hang: FakeServer;
  let hitter: FakeServer;
  let t: TestApp | undefined;

  beforeAll(async () => {
    sink = await startSink({ host: '127.0.0.2' });
    hang = await startFakeServer(fakeClamd);
    hang.behaviour = 'hang';
    hitter = await startFakeServer(fakeClamd);
    hitter.behaviour = 'hit';
  });
  afterEach(async () => {
    await t?.stop();
    t = undefined;
  });
  afterAll(async () => {
    await Promise.all([sink?.close(), hang?.close(), hitter?.close()]);
  });

  const real = () => ({ name: 'clamav', type: 'clamd' as const, servers: [{ host: clamd!.host, port: clamd!.port }] });

  it('refuses EICAR with 550 5.7.1 naming the signature, keeps nothing, sends no bounce, records the scan', async () => {
    t = await startApp(config(sink, { engines: [real()] }));
    const before = sink.messages.length;
    const res = await send(t, eicarMail());
    expect(res.ok).toBe(false);
    expect(res.reply).toMatch(/^550 5\.7\.1 message refused: virus found \(Eicar-Test-Signature(\.UNOFFICIAL)?\)/);
    expect((await readdir(join(t.dataDir, 'spool'))).filter((f) => f !== 'corrupt')).toEqual([]);
    const rows = db(t);
    try {
      await waitUntil(() => (rows.prepare('SELECT COUNT(*) AS n FROM scans').get() as { n: number }).n === 1, 5_000, 'the scan record');
      const scan = rows.prepare('SELECT * FROM scans').get() as { action: string; reason: string; runs: string };
      expect(scan.action).toBe('reject');
      expect(scan.reason).toMatch(/virus Eicar-Test-Signature\S* found by clamav/);
      const [run] = JSON.parse(scan.runs);
      expect(run).toMatchObject({ engine: 'clamav', kind: 'av', status: 'infected' });
      expect(run.version).toMatch(/^ClamAV /);
      expect((rows.prepare('SELECT COUNT(*) AS n FROM messages').get() as { n: number }).n).toBe(0);
    } finally {
      rows.close();
    }
    await new Promise((r) => setTimeout(r, 300));
    expect(sink.messages.length).toBe(before);
  });

  it('passes a clean message with X-Virus-Scanned added at delivery; the spool file stays as received', async () => {
    t = await startApp(config(sink, { engines: [real()] }));
    const before = sink.messages.length;
    const res = await send(t, CLEAN_MAIL);
    expect(res.reply).toMatch(/^250 /);
    const qid = qidOf(res.reply);
    const spoolBytes = await readFile(join(t.dataDir, 'spool', qid)).catch(() => null);
    if (spoolBytes) expect(spoolBytes.toString()).toBe(CLEAN_MAIL);
    const [m] = (await sink.waitFor(before + 1)).slice(before);
    const text = m.data.toString();
    expect(text).toMatch(/\r\nX-Virus-Scanned: clean by clamav\r\n/);
    expect(text.endsWith(CLEAN_MAIL)).toBe(true);
    const rows = db(t);
    try {
      const scan = readScan(rows, qid);
      expect(scan?.action).toBe('accept');
    } finally {
      rows.close();
    }
  });

  it("leaves out the sender's copies of the fields Ichidan adds, and any Authentication-Results claiming this host", async () => {
    t = await startApp(config(sink, { engines: [real()] }));
    const before = sink.messages.length;
    const forged = CLEAN_MAIL.replace('Subject: Lunch on Friday\r\n', [
      'Subject: Lunch on Friday', 'X-Virus-Scanned: clean by everyone', 'Authentication-Results: mx.ichidan.test; dmarc=pass',
      'X-Ichidan-Unscanned: no', 'Authentication-Results: mx.elsewhere.test; spf=pass', '',
    ].join('\r\n'));
    const res = await send(t, forged);
    expect(res.reply).toMatch(/^250 /);
    const [m] = (await sink.waitFor(before + 1)).slice(before);
    const text = m.data.toString();
    expect(text.match(/^X-Virus-Scanned: .*$/gm)).toEqual(['X-Virus-Scanned: clean by clamav']);
    expect(text).not.toContain('dmarc=pass');
    expect(text).not.toContain('X-Ichidan-Unscanned');
    expect(text).toContain('Authentication-Results: mx.elsewhere.test; spf=pass\r\n');
    expect(text.endsWith(CLEAN_MAIL.slice(CLEAN_MAIL.indexOf('\r\n\r\n')))).toBe(true);
    // The spool file keeps the message exactly as received.
    const qid = qidOf(res.reply);
    const kept = await readFile(join(t.dataDir, 'spool', qid)).catch(() => null);
    if (kept) expect(kept.toString()).toBe(forged);
  });

  it('does not wait for an engine that hangs past its deadline', async () => {
    t = await startApp(config(sink, {
      engines: [real(), { name: 'stuck', type: 'clamd', servers: [{ host: hang.host, port: hang.port }], timeout: '500ms' }],
    }));
    const t0 = performance.now();
    const res = await send(t, CLEAN_MAIL);
    const ms = performance.now() - t0;
    expect(res.reply).toMatch(/^250 /);
    expect(ms).toBeLessThan(2_000);
    const rows = db(t);
    try {
      await waitUntil(() => !!readScan(rows, qidOf(res.reply)), 5_000, 'the scan record');
      const runs = JSON.parse(readScan(rows, qidOf(res.reply))!.runs) as Array<{ engine: string; status: string; error?: string; ms: number }>;
      const stuck = runs.find((r) => r.engine === 'stuck')!;
      expect(stuck).toMatchObject({ status: 'error', error: 'timeout' });
      expect(stuck.ms).toBeGreaterThanOrEqual(450);
      expect(stuck.ms).toBeLessThan(1_000);
    } finally {
      rows.close();
    }
  });

  it('answers 451 4.7.1 when the only AV engine cannot answer (quorum), and keeps nothing', async () => {
    t = await startApp(config(sink, { engines: [{ name: 'stuck', type: 'clamd', servers: [{ host: hang.host, port: hang.port }], timeout: '300ms' }] }));
    const res = await send(t, CLEAN_MAIL);
    expect(res.reply).toMatch(/^451 4\.7\.1 /);
    expect((await readdir(join(t.dataDir, 'spool'))).filter((f) => f !== 'corrupt')).toEqual([]);
  });

  it("refuses mail above the AV and policy engines' maxSize (limits.maxMessageSize above it) as not fully scanned, and warns at start naming the keys", async () => {
    const small = { maxSize: '1MB' } as const;
    const engines = (extra: object) => [{ ...real(), ...small, ...extra }, { name: 'attachments', type: 'policy' as const, ...small, ...extra }];
    t = await startApp(config(sink, { limits: { maxMessageSize: '4MB' }, engines: engines({}) }));
    const warnings = t.logs.filter((l) => l.level === 40).map((l) => String(l.msg));
    expect(warnings).toEqual([
      'engines[0].maxSize (1048576 bytes) is below limits.maxMessageSize (4194304 bytes): larger messages are judged not fully scanned by "clamav" (scanning.unscannable); raise engines[0].maxSize or lower limits.maxMessageSize',
      'engines[1].maxSize (1048576 bytes) is below limits.maxMessageSize (4194304 bytes): larger messages are judged not fully scanned by "attachments" (scanning.unscannable); raise engines[1].maxSize or lower limits.maxMessageSize',
    ]);
    const big = attachmentMail({ ...EXE, body: Buffer.concat([Buffer.from(EXE.body), Buffer.alloc(1_500_000)]) });
    const res = await send(t, big);
    expect(res.reply).toMatch(/^550 5\.7\.1 message refused: content could not be fully scanned \(clamav: a message of \d+ bytes is larger than its maxSize of 1048576\)/);
    expect((await readdir(join(t.dataDir, 'spool'))).filter((f) => f !== 'corrupt')).toEqual([]);
    expect((await send(t, attachmentMail(EXE))).reply).toMatch(/^550 5\.7\.1 message refused: attachment "setup\.exe": blocked extension \.exe/);
    await t.stop();
    // Skipping large mail is an operator's explicit choice, marked on the message and warned about.
    t = await startApp(config(sink, { limits: { maxMessageSize: '4MB' }, engines: engines({ oversize: 'skip' }) }));
    expect(t.logs.filter((l) => l.level === 40).map((l) => String(l.msg))).toEqual([
      'engines[0].maxSize (1048576 bytes) is below limits.maxMessageSize (4194304 bytes): larger messages are not checked by "clamav" at all (engines[0].oversize: skip)',
      'engines[1].maxSize (1048576 bytes) is below limits.maxMessageSize (4194304 bytes): larger messages are not checked by "attachments" at all (engines[1].oversize: skip)',
    ]);
    const before = sink.messages.length;
    expect((await send(t, big)).reply).toMatch(/^250 /);
    const [m] = (await sink.waitFor(before + 1)).slice(before);
    expect(m.data.toString()).toMatch(/\r\nX-Ichidan-Unscanned: too large for clamav, attachments\r\n/);
  });

  it('accepts tagged unscanned when configured to, below quorum', async () => {
    t = await startApp(config(sink, {
      engines: [{ name: 'stuck', type: 'clamd', servers: [{ host: hang.host, port: hang.port }], timeout: '300ms' }],
      scanning: { belowQuorum: 'accept' },
    }));
    const before = sink.messages.length;
    const res = await send(t, CLEAN_MAIL);
    expect(res.reply).toMatch(/^250 /);
    const [m] = (await sink.waitFor(before + 1)).slice(before);
    expect(m.data.toString()).toMatch(/\r\nX-Ichidan-Unscanned: av quorum not met\r\n/);
    expect(m.data.toString()).toMatch(/\r\nX-Virus-Scanned: not scanned \(stuck timeout\)\r\n/);
  });

  it('records a shadow engine without letting it decide', async () => {
    const dataDir = await mkdtemp(join(tmpdir(), 'ichidan-test-'));
    t = await startApp(config(sink, {
      engines: [real(), { name: 'trial', type: 'clamd', servers: [{ host: hitter.host, port: hitter.port }], shadow: true }],
    }), { dataDir });
    const res = await send(t, CLEAN_MAIL);
    expect(res.reply).toMatch(/^250 /);
    const rows = db(t);
    try {
      // A shadow engine that ends after the counted ones is added to the record a moment later.
      await waitUntil(() => (readScan(rows, qidOf(res.reply))?.runs ?? '').includes('"trial"'), 5_000, 'the scan record with the shadow run');
      const runs = JSON.parse(readScan(rows, qidOf(res.reply))!.runs) as Array<{ engine: string; status: string; shadow: boolean }>;
      expect(runs.find((r) => r.engine === 'trial')).toMatchObject({ status: 'infected', shadow: true });
      expect(runs.find((r) => r.engine === 'clamav')).toMatchObject({ status: 'clean', shadow: false });
    } finally {
      rows.close();
    }
    await t.stop();
    const stats = db(t);
    try {
      const byEngine = Object.fromEntries(readEngineStats(stats, '2000-01-01').map((r) => [r.engine, r]));
      expect(byEngine.trial).toMatchObject({ scanned: 1, detected: 1, detectedAlone: 1 });
      expect(byEngine.clamav).toMatchObject({ scanned: 1, detected: 0 });
    } finally {
      stats.close();
      await rm(dataDir, { recursive: true, force: true });
    }
    t = undefined;
  });

  it('does not hold the reply for a slow shadow engine; its result is added to the record when it ends', async () => {
    const slow = await startFakeServer((socket) => {
      let buf = Buffer.alloc(0);
      socket.on('data', (d: Buffer) => {
        buf = Buffer.concat([buf, d]);
        if (buf.subarray(-4).equals(Buffer.alloc(4))) setTimeout(() => socket.end('stream: Slow.Vendor.Sig FOUND\0'), 1_500);
      });
    });
    const dataDir = await mkdtemp(join(tmpdir(), 'ichidan-test-'));
    try {
      t = await startApp(config(sink, {
        engines: [real(), { name: 'slow-trial', type: 'clamd', servers: [{ host: slow.host, port: slow.port }], shadow: true, timeout: '5s' }],
      }), { dataDir });
      const t0 = performance.now();
      const res = await send(t, CLEAN_MAIL);
      expect(res.reply).toMatch(/^250 /);
      expect(performance.now() - t0).toBeLessThan(1_000);
      const rows = db(t);
      try {
        await waitUntil(() => (readScan(rows, qidOf(res.reply))?.runs ?? '').includes('slow-trial'), 5_000, 'the shadow run to be recorded');
        const runs = JSON.parse(readScan(rows, qidOf(res.reply))!.runs) as Array<{ engine: string; status: string; signature?: string; ms: number }>;
        expect(runs.map((r) => `${r.engine}:${r.status}`)).toEqual(['clamav:clean', 'slow-trial:infected']);
        expect(runs[1].ms).toBeGreaterThan(1_400);
      } finally {
        rows.close();
      }
      await t.stop();
      t = undefined;
      const stats = new Database(join(dataDir, 'queue.db'), { readonly: true });
      try {
        expect(readEngineStats(stats, '2000-01-01').find((r) => r.engine === 'slow-trial')).toMatchObject({ scanned: 1, detected: 1, detectedAlone: 1 });
      } finally {
        stats.close();
      }
    } finally {
      await slow.close();
      await rm(dataDir, { recursive: true, force: true });
    }
  });

  it('quarantines instead of refusing when configured; the message is listed and released on demand', async () => {
    t = await startApp(config(sink, { engines: [real()], scanning: { virus: 'quarantine' } }));
    const before = sink.messages.length;
    const res = await send(t, eicarMail());
    expect(res.reply).toMatch(/^250 /);
    const qid = qidOf(res.reply);
    const rows = db(t);
    try {
      const [q] = readQuarantine(rows);
      expect(q).toMatchObject({ id: qid, recipients: 1 });
      expect(q.quarantine).toMatch(/virus Eicar-Test-Signature\S* found by clamav/);
    } finally {
      rows.close();
    }
    await new Promise((r) => setTimeout(r, 500));
    expect(sink.messages.length).toBe(before);
    expect(await t.app.queue.releaseMessage(qid)).toBe(1);
    const [m] = (await sink.waitFor(before + 1)).slice(before);
    expect(m.rcptTo).toEqual(['bob@example.test']);
  });
});

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
    const rows = db(t);
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
    const res = await send(t, CLEAN_MAIL);
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
    const res = await send(t, raw);
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
    const res = await send(t, raw);
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
    const res = await send(t, raw);
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
    const res = await send(t, gtubeMail(), 'dave@tagged.test');
    expect(res.reply).toMatch(/^250 /);
    const [m] = (await sink.waitFor(before + 1)).slice(before);
    const head = m.data.toString().split('\r\n\r\n')[0];
    expect(head).toMatch(/\r\nSubject: \[SPAM\] Cheap watches\r\n/);
    expect(head).toMatch(/\r\nX-Spam-Flag: YES\r\n/);
    expect(head).toMatch(/\r\nX-Spam-Status: Yes, score=[\d.]+ tag=0\.5 mode=any engines=spamassassin=1000\/5\r\n/);
  });

  it('runs a tenant through its own engines only', async () => {
    const before = sink.messages.length;
    const res = await send(t, gtubeMail(), 'carol@lax.test');
    expect(res.reply).toMatch(/^250 /);
    const scan = await lastScan(qidOf(res.reply));
    expect(scan.runs.map((r) => r.engine)).toEqual(['attachments']);
    const [m] = (await sink.waitFor(before + 1)).slice(before);
    expect(m.rcptTo).toEqual(['carol@lax.test']);
  });
});

describe('what the engines read', () => {
  let fake: FakeServer;
  let sink: Sink;
  let t: TestApp;
  const seen: Buffer[] = [];

  beforeAll(async () => {
    sink = await startSink({ host: '127.0.0.2' });
    // A clamd that records the bytes it was sent.
    fake = await startFakeServer((socket) => {
      let buf = Buffer.alloc(0);
      socket.on('data', (d: Buffer) => {
        buf = Buffer.concat([buf, d]);
        let at = buf.indexOf(0) + 1;
        if (at === 0) return;
        const parts: Buffer[] = [];
        while (buf.length >= at + 4) {
          const n = buf.readUInt32BE(at);
          if (buf.length < at + 4 + n) return;
          if (n === 0) {
            seen.push(Buffer.concat(parts));
            socket.end('stream: OK\0');
            return;
          }
          parts.push(buf.subarray(at + 4, at + 4 + n));
          at += 4 + n;
        }
      });
    });
    t = await startApp(config(sink, { engines: [{ name: 'recorder', type: 'clamd', servers: [{ host: fake.host, port: fake.port }] }] }));
  });
  afterAll(async () => {
    await t?.stop();
    await Promise.all([sink?.close(), fake?.close()]);
  });

  it.each([[3_000, 3], [50_000, 7], [300_000, 20]])('is the whole message of %i bytes when DATA arrives in %i pieces', async (size, pieces) => {
    const body = Array.from({ length: Math.ceil(size / 50) }, (_, i) => `line ${String(i).padStart(6, '0')} of a message sent in pieces..`).join('\r\n');
    const raw = `From: <alice@sender.test>\r\nTo: <bob@example.test>\r\nSubject: pieces\r\n\r\n${body}\r\n`;
    const smtp = await RawSmtp.atData(t.port('mx'), 'alice@sender.test', ['bob@example.test']);
    const bytes = Buffer.from(raw);
    const step = Math.ceil(bytes.length / pieces);
    for (let i = 0; i < bytes.length; i += step) {
      smtp.socket.write(bytes.subarray(i, i + step));
      await new Promise((r) => setTimeout(r, 5));
    }
    await smtp.finishData('');
    expect(seen.at(-1)?.length).toBe(bytes.length);
    expect(seen.at(-1)?.toString()).toBe(raw);
    smtp.socket.destroy();
  });
});
