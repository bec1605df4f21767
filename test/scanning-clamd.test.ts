// Scanning with the real clamd beside fault-injecting fakes: refusals, clean mail with its headers,
// engines that hang or cannot answer (quorum), size limits, tagged unscanned, shadow engines and
// quarantine; each test starts its own Ichidan.
import Database from 'better-sqlite3';
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { demoConfig, startApp, waitUntil, type TestApp } from './helpers/app.js';
import { realDaemon } from './helpers/daemons.js';
import { CLEAN_MAIL, eicarMail, startFakeServer, type FakeServer } from './helpers/engine-contract.js';
import { fakeClamd } from './helpers/fake-clamd.js';
import { attachmentMail, EXE } from './helpers/padded-mail.js';
import { readEngineStats, readQuarantine, readScan, recordsDb } from './helpers/records.js';
import { qidOf, sendRaw } from './helpers/send-raw.js';
import { startSink, type Sink } from './helpers/sink.js';

const clamd = realDaemon('clamd');

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
    t = await startApp(demoConfig(sink, { engines: [real()] }));
    const before = sink.messages.length;
    const res = await sendRaw(t, eicarMail());
    expect(res.ok).toBe(false);
    expect(res.reply).toMatch(/^550 5\.7\.1 message refused: virus found \(Eicar-Test-Signature(\.UNOFFICIAL)?\)/);
    expect((await readdir(join(t.dataDir, 'spool'))).filter((f) => f !== 'corrupt')).toEqual([]);
    const rows = recordsDb(t.dataDir);
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
    t = await startApp(demoConfig(sink, { engines: [real()] }));
    const before = sink.messages.length;
    const res = await sendRaw(t, CLEAN_MAIL);
    expect(res.reply).toMatch(/^250 /);
    const qid = qidOf(res.reply);
    const spoolBytes = await readFile(join(t.dataDir, 'spool', qid)).catch(() => null);
    if (spoolBytes) expect(spoolBytes.toString()).toBe(CLEAN_MAIL);
    const [m] = (await sink.waitFor(before + 1)).slice(before);
    const text = m.data.toString();
    expect(text).toMatch(/\r\nX-Virus-Scanned: clean by clamav\r\n/);
    expect(text.endsWith(CLEAN_MAIL)).toBe(true);
    const rows = recordsDb(t.dataDir);
    try {
      const scan = readScan(rows, qid);
      expect(scan?.action).toBe('accept');
    } finally {
      rows.close();
    }
  });

  it("leaves out the sender's copies of the fields Ichidan adds, and any Authentication-Results claiming this host", async () => {
    t = await startApp(demoConfig(sink, { engines: [real()] }));
    const before = sink.messages.length;
    const forged = CLEAN_MAIL.replace('Subject: Lunch on Friday\r\n', [
      'Subject: Lunch on Friday', 'X-Virus-Scanned: clean by everyone', 'Authentication-Results: mx.ichidan.test; dmarc=pass',
      'X-Ichidan-Unscanned: no', 'Authentication-Results: mx.elsewhere.test; spf=pass', '',
    ].join('\r\n'));
    const res = await sendRaw(t, forged);
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
    t = await startApp(demoConfig(sink, {
      engines: [real(), { name: 'stuck', type: 'clamd', servers: [{ host: hang.host, port: hang.port }], timeout: '500ms' }],
    }));
    const t0 = performance.now();
    const res = await sendRaw(t, CLEAN_MAIL);
    const ms = performance.now() - t0;
    expect(res.reply).toMatch(/^250 /);
    expect(ms).toBeLessThan(2_000);
    const rows = recordsDb(t.dataDir);
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
    t = await startApp(demoConfig(sink, { engines: [{ name: 'stuck', type: 'clamd', servers: [{ host: hang.host, port: hang.port }], timeout: '300ms' }] }));
    const res = await sendRaw(t, CLEAN_MAIL);
    expect(res.reply).toMatch(/^451 4\.7\.1 /);
    expect((await readdir(join(t.dataDir, 'spool'))).filter((f) => f !== 'corrupt')).toEqual([]);
  });

  it("refuses mail above the AV and policy engines' maxSize (limits.maxMessageSize above it) as not fully scanned, and warns at start naming the keys", async () => {
    const small = { maxSize: '1MB' } as const;
    const engines = (extra: object) => [{ ...real(), ...small, ...extra }, { name: 'attachments', type: 'policy' as const, ...small, ...extra }];
    t = await startApp(demoConfig(sink, { limits: { maxMessageSize: '4MB' }, engines: engines({}) }));
    const warnings = t.logs.filter((l) => l.level === 40).map((l) => String(l.msg));
    expect(warnings).toEqual([
      'engines[0].maxSize (1048576 bytes) is below limits.maxMessageSize (4194304 bytes): larger messages are judged not fully scanned by "clamav" (scanning.unscannable); raise engines[0].maxSize or lower limits.maxMessageSize',
      'engines[1].maxSize (1048576 bytes) is below limits.maxMessageSize (4194304 bytes): larger messages are judged not fully scanned by "attachments" (scanning.unscannable); raise engines[1].maxSize or lower limits.maxMessageSize',
    ]);
    const big = attachmentMail({ ...EXE, body: Buffer.concat([Buffer.from(EXE.body), Buffer.alloc(1_500_000)]) });
    const res = await sendRaw(t, big);
    expect(res.reply).toMatch(/^550 5\.7\.1 message refused: content could not be fully scanned \(clamav: a message of \d+ bytes is larger than its maxSize of 1048576\)/);
    expect((await readdir(join(t.dataDir, 'spool'))).filter((f) => f !== 'corrupt')).toEqual([]);
    expect((await sendRaw(t, attachmentMail(EXE))).reply).toMatch(/^550 5\.7\.1 message refused: attachment "setup\.exe": blocked extension \.exe/);
    await t.stop();
    // Skipping large mail is an operator's explicit choice, marked on the message and warned about.
    t = await startApp(demoConfig(sink, { limits: { maxMessageSize: '4MB' }, engines: engines({ oversize: 'skip' }) }));
    expect(t.logs.filter((l) => l.level === 40).map((l) => String(l.msg))).toEqual([
      'engines[0].maxSize (1048576 bytes) is below limits.maxMessageSize (4194304 bytes): larger messages are not checked by "clamav" at all (engines[0].oversize: skip)',
      'engines[1].maxSize (1048576 bytes) is below limits.maxMessageSize (4194304 bytes): larger messages are not checked by "attachments" at all (engines[1].oversize: skip)',
    ]);
    const before = sink.messages.length;
    expect((await sendRaw(t, big)).reply).toMatch(/^250 /);
    const [m] = (await sink.waitFor(before + 1)).slice(before);
    expect(m.data.toString()).toMatch(/\r\nX-Ichidan-Unscanned: too large for clamav, attachments\r\n/);
  });

  it('accepts tagged unscanned when configured to, below quorum', async () => {
    t = await startApp(demoConfig(sink, {
      engines: [{ name: 'stuck', type: 'clamd', servers: [{ host: hang.host, port: hang.port }], timeout: '300ms' }],
      scanning: { belowQuorum: 'accept' },
    }));
    const before = sink.messages.length;
    const res = await sendRaw(t, CLEAN_MAIL);
    expect(res.reply).toMatch(/^250 /);
    const [m] = (await sink.waitFor(before + 1)).slice(before);
    expect(m.data.toString()).toMatch(/\r\nX-Ichidan-Unscanned: av quorum not met\r\n/);
    expect(m.data.toString()).toMatch(/\r\nX-Virus-Scanned: not scanned \(stuck timeout\)\r\n/);
  });

  it('records a shadow engine without letting it decide', async () => {
    const dataDir = await mkdtemp(join(tmpdir(), 'ichidan-test-'));
    t = await startApp(demoConfig(sink, {
      engines: [real(), { name: 'trial', type: 'clamd', servers: [{ host: hitter.host, port: hitter.port }], shadow: true }],
    }), { dataDir });
    const res = await sendRaw(t, CLEAN_MAIL);
    expect(res.reply).toMatch(/^250 /);
    const rows = recordsDb(t.dataDir);
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
    const stats = recordsDb(t.dataDir);
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
      t = await startApp(demoConfig(sink, {
        engines: [real(), { name: 'slow-trial', type: 'clamd', servers: [{ host: slow.host, port: slow.port }], shadow: true, timeout: '5s' }],
      }), { dataDir });
      const t0 = performance.now();
      const res = await sendRaw(t, CLEAN_MAIL);
      expect(res.reply).toMatch(/^250 /);
      expect(performance.now() - t0).toBeLessThan(1_000);
      const rows = recordsDb(t.dataDir);
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
    t = await startApp(demoConfig(sink, { engines: [real()], scanning: { virus: 'quarantine' } }));
    const before = sink.messages.length;
    const res = await sendRaw(t, eicarMail());
    expect(res.reply).toMatch(/^250 /);
    const qid = qidOf(res.reply);
    const rows = recordsDb(t.dataDir);
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
