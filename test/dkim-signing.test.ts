// DKIM signing of outbound mail, end to end: a tenant's user submits (AUTH) or its network relays,
// Ichidan signs with the tenant's keys (RSA-2048 and Ed25519 for one domain: a rotation, two
// signatures), a sink on 127.0.0.x receives, and the received bytes are verified by mailauth and by
// a real rspamd whose resolver asks the test's DNS server for the published keys. The spool file
// holds the message exactly as the client sent it, written once: the signatures live in the queue
// store and are streamed in front of it.
import { generateKeyPairSync } from 'node:crypto';
import { promises as dnsPromises } from 'node:dns';
import { readFile, rm, mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { authenticate } from 'mailauth';
import nodemailer from 'nodemailer';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { dkimTxtRecord, readSigningKey } from '../queue/accept/accept-dkim-config.js';
import { baseConfig, startApp, TEST_HASH, TEST_PASSWORD, waitUntil, type ConfigInput, type TestApp } from './helpers/app.js';
import { startDns, type TestDns } from './helpers/dns-server.js';
import { realDaemon, SKIP_REASON } from './helpers/daemons.js';
import { GTUBE } from './helpers/engine-contract.js';
import { rspamdInstalled, startPrivateRspamd, type PrivateRspamd } from './helpers/private-rspamd.js';
import { startSink, type Sink } from './helpers/sink.js';

const RAW = [
  'From: Ann <ann@acme.test>', 'To: Bob <bob@remote.test>', 'Subject: the quarterly', ' numbers', 'Date: Mon, 7 Dec 2026 00:00:00 +0000',
  'Message-ID: <q4@acme.test>', 'MIME-Version: 1.0', 'Content-Type: text/plain; charset=utf-8', '',
  'Dear Bob,   ', '', '.a line that starts with a dot', 'and trailing blank lines', '', '', '',
].join('\r\n');

const keyFiles: Record<string, string> = {};
let keyDir: string;

function records(): Record<string, string> {
  const record = (file: string, alg: 'rsa-sha256' | 'ed25519-sha256') => {
    const loaded = readSigningKey(file, alg);
    if ('problem' in loaded) throw new Error(loaded.problem);
    return dkimTxtRecord(loaded.key, alg);
  };
  return {
    's2026._domainkey.acme.test': record(keyFiles.rsa, 'rsa-sha256'),
    'ed2026._domainkey.acme.test': record(keyFiles.ed, 'ed25519-sha256'),
  };
}

describe('DKIM signing of outbound mail', () => {
  let t: TestApp;
  let internet: Sink;
  let mailbox: Sink;
  let dns: TestDns;
  let resolver: dnsPromises.Resolver;
  let build: (dir: string) => ConfigInput;

  beforeAll(async () => {
    keyDir = await mkdtemp(join(tmpdir(), 'ichidan-dkim-keys-'));
    keyFiles.rsa = join(keyDir, 'rsa.pem');
    keyFiles.ed = join(keyDir, 'ed.pem');
    await writeFile(keyFiles.rsa, generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ format: 'pem', type: 'pkcs8' }) as string);
    await writeFile(keyFiles.ed, generateKeyPairSync('ed25519').privateKey.export({ format: 'pem', type: 'pkcs8' }) as string);
    dns = await startDns(Object.fromEntries(Object.entries(records()).map(([name, txt]) => [name, { txt: [txt] }])));
    resolver = new dnsPromises.Resolver({ timeout: 2000, tries: 1 });
    resolver.setServers([dns.server]);
    // The first attempt at remote.test is deferred, so the queued spool file can be looked at.
    internet = await startSink({ host: '127.0.0.4', rcpt: (a, n) => (a.startsWith('hold@') && n === 1 ? { code: 451, text: '4.3.0 later' } : undefined) });
    mailbox = await startSink({ host: '127.0.0.2' });
    t = await startApp(build = (dir) => baseConfig(dir, {
      tenants: {
        acme: {
          domains: ['acme.test'], networks: ['127.0.0.9/32'],
          dkim: [
            { domain: 'acme.test', selector: 's2026', key: keyFiles.rsa },
            { domain: 'acme.test', selector: 'ed2026', key: keyFiles.ed, algorithm: 'ed25519-sha256', oversign: ['From', 'Subject', 'Sender'] },
          ],
        },
        beta: { domains: ['beta.test'] },
      },
      users: [{ name: 'ann@acme.test', password: TEST_HASH, tenant: 'acme' }],
      routes: { 'beta.test': { host: '127.0.0.2', port: mailbox.port }, '*': { host: '127.0.0.4', port: internet.port } },
      queue: { retryInitial: '2s', retryMax: '2s', retryJitter: 0 },
    }));
  });
  afterAll(async () => {
    await t?.stop();
    await Promise.all([internet?.close(), mailbox?.close(), dns?.close()]);
    if (keyDir) await rm(keyDir, { recursive: true, force: true });
  });

  const submit = (raw: string, to: string) => nodemailer.createTransport({
    host: '127.0.0.1', port: t.port('submission'), secure: false, requireTLS: true, tls: { rejectUnauthorized: false },
    auth: { user: 'ann@acme.test', pass: TEST_PASSWORD },
  }).sendMail({ envelope: { from: 'ann@acme.test', to: [to] }, raw });

  const verify = async (message: Buffer) => (await authenticate(message, {
    ip: '203.0.113.5', helo: 'mx.ichidan.test', sender: 'ann@acme.test', mta: 'mx.remote.test',
    resolver: (name: string, type: string) => resolver.resolve(name, type) as Promise<string[][]>,
    disableArc: true, disableDmarc: true, disableBimi: true,
  })).dkim.results.map((r) => `${r.selector}:${r.status.result}`);

  it('signs a user\'s submission with both keys of the From: domain; mailauth verifies both; the spool file is the message as sent, written once', async () => {
    const spool = t.app.queue.spool;
    const createWriter = spool.createWriter.bind(spool);
    let writers = 0;
    let written = 0;
    spool.createWriter = async (...args) => {
      const w = await createWriter(...args);
      writers++;
      const write = w.write.bind(w) as (chunk: Buffer, ...rest: unknown[]) => boolean;
      w.write = ((chunk: Buffer, ...rest: unknown[]) => { written += chunk.length; return write(chunk, ...rest); }) as typeof w.write;
      return w;
    };
    let info;
    try {
      info = await submit(RAW, 'hold@remote.test');
    } finally {
      spool.createWriter = createWriter;
    }
    const qid = info.response.split(' ').pop()!;
    await waitUntil(() => internet.rcptAttempts.get('hold@remote.test') === 1, 10_000, 'the first, deferred attempt');
    // Written once, by one writer, byte for byte what the client sent; the signatures are in the queue store.
    expect(writers).toBe(1);
    expect(written).toBe(Buffer.byteLength(RAW));
    expect((await readFile(spool.path(qid))).equals(Buffer.from(RAW))).toBe(true);
    const row = t.app.queue.store.message(qid)!;
    expect(row.trace.match(/^DKIM-Signature:/gm)).toHaveLength(2);
    expect(row.trace.indexOf('DKIM-Signature')).toBe(0);
    const [got] = await internet.waitFor(1, 15_000);
    expect(got.rcptTo).toEqual(['hold@remote.test']);
    expect(got.data.subarray(got.data.length - Buffer.byteLength(RAW)).equals(Buffer.from(RAW))).toBe(true);
    expect(await verify(got.data)).toEqual(['s2026:pass', 'ed2026:pass']);
    const text = got.data.toString('latin1').replace(/\r\n[ \t]+/g, ' ');
    expect(text).toMatch(/^DKIM-Signature: .*a=rsa-sha256;.*d=acme\.test;.*s=s2026;/m);
    expect(text).toMatch(/^DKIM-Signature: .*a=ed25519-sha256;.*d=acme\.test;.*s=ed2026;/m);
    // The Ed25519 key oversigns From, Subject and Sender: an added Sender or From breaks it, not the RSA one (which does not list Sender).
    expect(await verify(Buffer.concat([Buffer.from('Sender: m@evil.test\r\n'), got.data]))).toEqual(['s2026:pass', 'ed2026:fail']);
    expect((await verify(Buffer.concat([Buffer.from('From: m@evil.test\r\n'), got.data]))).every((r) => !r.endsWith(':pass'))).toBe(true);
    const metrics = await t.app.metrics.getSingleMetricAsString('ichidan_dkim_signatures_total');
    expect(metrics).toContain('ichidan_dkim_signatures_total{tenant="acme",domain="acme.test",selector="s2026",result="signed"} 1');
    expect(metrics).toContain('ichidan_dkim_signatures_total{tenant="acme",domain="acme.test",selector="ed2026",result="signed"} 1');
  });

  it('signs mail the tenant\'s network relays without AUTH', async () => {
    const before = internet.messages.length;
    await nodemailer.createTransport({ host: '127.0.0.1', port: t.port('mx'), localAddress: '127.0.0.9', secure: false, ignoreTLS: true })
      .sendMail({ envelope: { from: 'app@acme.test', to: ['carol@remote.test'] }, raw: RAW.replace('ann@acme.test', 'app@acme.test') });
    const got = (await internet.waitFor(before + 1, 10_000))[before];
    expect(await verify(got.data)).toEqual(['s2026:pass', 'ed2026:pass']);
  });

  it('does not sign inbound mail for a hosted domain, nor a user\'s mail From: a domain its tenant has no key for', async () => {
    const before = mailbox.messages.length;
    // A stranger on the MX delivering to beta.test, with an acme.test From: no signature of acme's.
    await nodemailer.createTransport({ host: '127.0.0.1', port: t.port('mx'), secure: false, ignoreTLS: true })
      .sendMail({ envelope: { from: 'x@remote.test', to: ['dan@beta.test'] }, raw: RAW.replace('To: Bob <bob@remote.test>', 'To: dan@beta.test') });
    const inbound = (await mailbox.waitFor(before + 1, 10_000))[before];
    expect(inbound.data.toString('latin1')).not.toContain('DKIM-Signature');
    const sent = internet.messages.length;
    await submit(RAW.replace('ann@acme.test', 'ann@beta.test'), 'erin@remote.test');
    const other = (await internet.waitFor(sent + 1, 10_000))[sent];
    expect(other.data.toString('latin1')).not.toContain('DKIM-Signature');
  });

  it('refuses a reload whose key file is gone, naming the key, and keeps signing with the keys in force', async () => {
    const input = build(t.dataDir) as unknown as { tenants: { acme: { dkim: Array<{ key: string }> } } };
    input.tenants.acme.dkim[0].key = join(keyDir, 'rotated-away.pem');
    const file = join(keyDir, 'reload.yaml');
    await writeFile(file, JSON.stringify(input));
    const result = t.app.reload(file);
    expect(result).toEqual({ ok: false, problems: [`tenants.acme.dkim[0].key: cannot read the key file ${join(keyDir, 'rotated-away.pem')} (ENOENT)`] });
    const before = internet.messages.length;
    await submit(RAW, 'gina@remote.test');
    const got = (await internet.waitFor(before + 1, 10_000))[before];
    expect(await verify(got.data)).toEqual(['s2026:pass', 'ed2026:pass']);
  });

  describe.skipIf(!rspamdInstalled() && !process.env.CI)('verified by a real rspamd (private: its resolver asks the test DNS server)', () => {
    let rspamd: PrivateRspamd;
    beforeAll(async () => {
      rspamd = await startPrivateRspamd(dns.server);
    }, 200_000);
    afterAll(async () => {
      await rspamd?.stop();
    });

    it('finds both signatures valid, and rejects them when a From: is added after signing', async () => {
      const before = internet.messages.length;
      await submit(RAW, 'frank@remote.test');
      const got = (await internet.waitFor(before + 1, 10_000))[before];
      const headers = { IP: '203.0.113.5', Helo: 'mx.ichidan.test', From: 'ann@acme.test', Rcpt: 'frank@remote.test' };
      const symbols = await rspamd.check(got.data, headers);
      expect(symbols.R_DKIM_ALLOW?.options?.sort()).toEqual(['acme.test:s=ed2026', 'acme.test:s=s2026'].sort());
      expect(symbols.R_DKIM_REJECT).toBeUndefined();
      const forged = await rspamd.check(Buffer.concat([Buffer.from('From: m@evil.test\r\n'), got.data]), headers);
      expect(forged.R_DKIM_ALLOW).toBeUndefined();
      expect(forged.R_DKIM_REJECT).toBeDefined();
    });
  });
});

const spamd = realDaemon('spamd');

// The signature covers the header block as delivery sends it: with a scanning engine, Ichidan's
// verdict fields go in front, the sender's own copies of them are left out, and spam gets its
// Subject tagged — all at delivery, from the unchanged spool file.
describe.skipIf(!spamd)(`DKIM signing of scanned, spam-tagged mail (${SKIP_REASON})`, () => {
  let t: TestApp;
  let internet: Sink;
  let dns: TestDns;
  let dir: string;

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'ichidan-dkim-tag-'));
    const keyFile = join(dir, 'rsa.pem');
    await writeFile(keyFile, generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ format: 'pem', type: 'pkcs8' }) as string);
    const loaded = readSigningKey(keyFile, 'rsa-sha256');
    if ('problem' in loaded) throw new Error(loaded.problem);
    dns = await startDns({ 'tag1._domainkey.acme.test': { txt: [dkimTxtRecord(loaded.key, 'rsa-sha256')] } });
    internet = await startSink({ host: '127.0.0.4' });
    t = await startApp((d) => baseConfig(d, {
      tenants: {
        acme: {
          domains: ['acme.test'],
          dkim: [{ domain: 'acme.test', selector: 'tag1', key: keyFile }],
          scanning: { engines: ['spamassassin'], spam: { reject: null, subjectTag: '[SPAM]' } },
        },
      },
      users: [{ name: 'ann@acme.test', password: TEST_HASH, tenant: 'acme' }],
      routes: { '*': { host: '127.0.0.4', port: internet.port } },
      engines: [{ name: 'spamassassin', type: 'spamd', servers: [{ host: spamd!.host, port: spamd!.port }] }],
    }));
  });
  afterAll(async () => {
    await t?.stop();
    await Promise.all([internet?.close(), dns?.close()]);
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it('signs the Subject as delivery tags it, with the sender\'s own X-Spam-Flag left out; mailauth verifies it', async () => {
    const raw = RAW.replace('Subject: the quarterly', 'X-Spam-Flag: NO\r\nSubject: the quarterly').replace('Dear Bob,', `Dear Bob, ${GTUBE}`);
    const info = await nodemailer.createTransport({
      host: '127.0.0.1', port: t.port('submission'), secure: false, requireTLS: true, tls: { rejectUnauthorized: false },
      auth: { user: 'ann@acme.test', pass: TEST_PASSWORD },
    }).sendMail({ envelope: { from: 'ann@acme.test', to: ['hal@remote.test'] }, raw });
    const qid = info.response.split(' ').pop()!;
    const [got] = await internet.waitFor(1, 15_000);
    const text = got.data.toString('latin1');
    expect(text).toMatch(/^Subject: \[SPAM\] the quarterly/m);
    expect(text).not.toContain('X-Spam-Flag: NO');
    const resolver = new dnsPromises.Resolver({ timeout: 2000, tries: 1 });
    resolver.setServers([dns.server]);
    const res = await authenticate(got.data, {
      ip: '203.0.113.5', helo: 'mx.ichidan.test', sender: 'ann@acme.test', mta: 'mx.remote.test',
      resolver: (name: string, type: string) => resolver.resolve(name, type) as Promise<string[][]>,
      disableArc: true, disableDmarc: true, disableBimi: true,
    });
    expect(res.dkim.results.map((r) => `${r.selector}:${r.status.result}`)).toEqual(['tag1:pass']);
    // The spool file was the message as sent (it is gone once delivered; its size was recorded).
    expect(got.data.subarray(got.data.length - Buffer.byteLength(raw.slice(raw.indexOf('\r\n\r\n')))).toString('latin1')).toBe(raw.slice(raw.indexOf('\r\n\r\n')));
    expect(qid).toMatch(/^[0-9A-Z]{16}$/);
  });
});
