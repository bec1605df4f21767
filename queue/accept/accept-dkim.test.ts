import { createPublicKey, generateKeyPairSync, type KeyObject } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { authenticate } from 'mailauth';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { dkimKeySchema, dkimTxtRecord, dkimWarnings, readSigningKey } from './accept-dkim-config.js';
import { DkimKeys } from './accept-dkim-keys.js';
import { DkimCollector, fromDomain } from './accept-dkim.js';
import { parseStripRule, stripHeaderSection } from '../queue-headers.js';

let dir: string;
const files: Record<string, string> = {};

function pem(type: 'rsa' | 'ed25519', bits = 2048): string {
  const { privateKey } = type === 'rsa' ? generateKeyPairSync('rsa', { modulusLength: bits }) : generateKeyPairSync('ed25519');
  return privateKey.export({ format: 'pem', type: 'pkcs8' }) as string;
}

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'ichidan-dkim-'));
  const keys = { rsa: pem('rsa'), ed: pem('ed25519'), small: pem('rsa', 1024), tiny: pem('rsa', 512), other: pem('rsa') };
  for (const [name, text] of Object.entries(keys)) {
    files[name] = join(dir, `${name}.pem`);
    await writeFile(files[name], text);
  }
  files.garbage = join(dir, 'garbage.pem');
  await writeFile(files.garbage, 'not a key\n');
});
afterAll(() => rm(dir, { recursive: true, force: true }));

const entry = (over: Record<string, unknown>) => dkimKeySchema.parse({ domain: 'acme.test', selector: 's1', key: files.rsa, ...over });

/** A resolver serving the public keys of `keys` as TXT records, and nothing else. */
function resolverFor(keys: DkimKeys, records: Record<string, string>) {
  void keys;
  return async (name: string, type: string) => {
    const txt = records[name.toLowerCase()];
    if (type === 'TXT' && txt) return [[txt]];
    throw Object.assign(new Error(`no ${type} for ${name}`), { code: 'ENOTFOUND' });
  };
}

function collect(message: string, keys: DkimKeys, tenant: string | null, chunkSize = 7): DkimCollector {
  const collector = new DkimCollector((domain) => keys.keysFor(tenant, domain), 256 * 1024);
  const bytes = Buffer.from(message);
  for (let i = 0; i < bytes.length; i += chunkSize) collector.feed(bytes.subarray(i, i + chunkSize));
  collector.finish();
  return collector;
}

const MESSAGE = [
  'From: Alice <alice@acme.test>', 'To: bob@example.net', 'Subject: quarterly', '  report', 'Date: Sun, 6 Dec 2026 10:00:00 +0000',
  'Message-ID: <1@acme.test>', 'X-Spam-Status: Yes, forged by the sender', '', 'Hello Bob,  ', '', 'the numbers.', '', '',
].join('\r\n');

async function verify(delivered: string, records: Record<string, string>) {
  const res = await authenticate(Buffer.from(delivered), {
    ip: '192.0.2.1', helo: 'mx.acme.test', sender: 'alice@acme.test', mta: 'mx.example.net', resolver: resolverFor(null as never, records),
    disableArc: true, disableDmarc: true, disableBimi: true,
  });
  return res.dkim.results.map((r) => ({ d: r.signingDomain, s: r.selector, result: r.status.result, a: (r as { algo?: string }).algo }));
}

describe('the DKIM collector', () => {
  it('signs with RSA and Ed25519 keys of one domain (two signatures), over the header block as delivered', async () => {
    const keys = new DkimKeys({ acme: { dkim: [entry({}), entry({ selector: 'ed1', key: files.ed, algorithm: 'ed25519-sha256' })] } });
    const trace = 'Received: from client by mx.acme.test; Sun, 6 Dec 2026 10:00:01 +0000\r\nX-Spam-Status: No\r\n';
    const strip = parseStripRule('x-spam-status\n[SPAM]')!;
    const signed = collect(MESSAGE, keys, 'acme').sign(trace, strip, new Date());
    expect(signed.kind).toBe('signed');
    if (signed.kind !== 'signed') return;
    const [head, body] = [MESSAGE.slice(0, MESSAGE.indexOf('\r\n\r\n')), MESSAGE.slice(MESSAGE.indexOf('\r\n\r\n'))];
    const delivered = signed.fields + trace + stripHeaderSection(head, strip) + body;
    const records = {
      's1._domainkey.acme.test': dkimTxtRecord(readKey(files.rsa, 'rsa-sha256'), 'rsa-sha256'),
      'ed1._domainkey.acme.test': dkimTxtRecord(readKey(files.ed, 'ed25519-sha256'), 'ed25519-sha256'),
    };
    expect(await verify(delivered, records)).toEqual([
      { d: 'acme.test', s: 's1', result: 'pass', a: 'rsa-sha256' },
      { d: 'acme.test', s: 'ed1', result: 'pass', a: 'ed25519-sha256' },
    ]);
    // It signed the tagged Subject delivery sends, not the spool's own: the raw header block fails.
    expect((await verify(signed.fields + trace + MESSAGE, records)).map((r) => r.result)).toEqual(['fail', 'fail']);
  });

  it('oversigns: a From or Subject added after signing breaks the signature, and h= names them once more', async () => {
    const keys = new DkimKeys({ acme: { dkim: [entry({ oversign: ['From', 'Subject', 'Sender'] })] } });
    const signed = collect(MESSAGE, keys, 'acme').sign('', null, new Date());
    if (signed.kind !== 'signed') throw new Error(signed.kind);
    const h = /h=([^;]+)/.exec(signed.fields.replace(/\r\n\s+/g, ''))![1].split(':').map((s) => s.trim().toLowerCase());
    expect(h.filter((n) => n === 'from')).toHaveLength(2);
    expect(h.filter((n) => n === 'subject')).toHaveLength(2);
    expect(h.filter((n) => n === 'sender')).toHaveLength(1);
    const records = { 's1._domainkey.acme.test': dkimTxtRecord(readKey(files.rsa, 'rsa-sha256'), 'rsa-sha256') };
    expect((await verify(signed.fields + MESSAGE, records))[0].result).toBe('pass');
    expect((await verify(signed.fields + 'From: Mallory <m@evil.test>\r\n' + MESSAGE, records))[0].result).toBe('fail');
    expect((await verify(signed.fields + 'Sender: m@evil.test\r\n' + MESSAGE, records))[0].result).toBe('fail');
    // Without oversigning, the added field is not seen.
    const plain = new DkimKeys({ acme: { dkim: [entry({ oversign: [] })] } });
    const open = collect(MESSAGE, plain, 'acme').sign('', null, new Date());
    if (open.kind !== 'signed') throw new Error(open.kind);
    expect((await verify(open.fields + 'Sender: m@evil.test\r\n' + MESSAGE, records))[0].result).toBe('pass');
  });

  it('sets x= from expire, and a body changed after signing fails', async () => {
    const keys = new DkimKeys({ acme: { dkim: [entry({ expire: '7d' })] } });
    const now = new Date();
    const signed = collect(MESSAGE, keys, 'acme', 1).sign('', null, now);
    if (signed.kind !== 'signed') throw new Error(signed.kind);
    const tags = signed.fields.replace(/\r\n\s+/g, '');
    const t = Number(/t=(\d+)/.exec(tags)![1]);
    expect(Number(/x=(\d+)/.exec(tags)![1]) - t).toBe(7 * 86400);
    const records = { 's1._domainkey.acme.test': dkimTxtRecord(readKey(files.rsa, 'rsa-sha256'), 'rsa-sha256') };
    expect((await verify(signed.fields + MESSAGE, records))[0].result).toBe('pass');
    const changed = (await verify(signed.fields + MESSAGE.replace('numbers', 'numbres'), records))[0];
    expect(changed.result).not.toBe('pass');
  });

  it('picks keys by the From: domain and the sender\'s tenant; subdomains only when configured', () => {
    const keys = new DkimKeys({
      acme: { dkim: [entry({}), entry({ domain: 'corp.test', subdomains: true })] },
      other: { dkim: [entry({ domain: 'other.test', key: files.other })] },
    });
    const pick = (tenant: string | null, from: string) => keys.keysFor(tenant, from).map((k) => `${k.tenant}:${k.domain}`);
    expect(pick('acme', 'acme.test')).toEqual(['acme:acme.test']);
    expect(pick('acme', 'news.acme.test')).toEqual([]);
    expect(pick('acme', 'eu.news.corp.test')).toEqual(['acme:corp.test']);
    expect(pick('acme', 'other.test')).toEqual([]);
    expect(pick(null, 'other.test')).toEqual(['other:other.test']);
    expect(keys.signs('other')).toBe(true);
    expect(keys.signs('nobody')).toBe(false);
    // Mail whose From: domain has no key is left unsigned, its body not even hashed.
    expect(collect(MESSAGE.replace('alice@acme.test', 'alice@elsewhere.test'), keys, 'acme').sign('', null, new Date())).toEqual({ kind: 'unsigned' });
  });

  it('makes the same signatures however the data is cut into chunks (the blank line across chunks)', () => {
    const keys = new DkimKeys({ acme: { dkim: [entry({}), entry({ selector: 'ed1', key: files.ed, algorithm: 'ed25519-sha256' })] } });
    const now = new Date('2026-12-07T00:00:00Z');
    const made = [1, 2, 3, 4, 5, 13, 64, 1 << 20].map((size) => {
      const r = collect(MESSAGE, keys, 'acme', size).sign('', null, now);
      return r.kind === 'signed' ? r.fields : r.kind;
    });
    expect(new Set(made).size).toBe(1);
    expect(made[0]).toMatch(/^DKIM-Signature: /);
  });

  it('reads the one From: domain, or none when there are several', () => {
    expect(fromDomain(Buffer.from('From: "Doe, J" <j@Acme.Test>\r\n'))).toBe('acme.test');
    expect(fromDomain(Buffer.from('From: a@x.test, b@x.test\r\n'))).toBe('x.test');
    expect(fromDomain(Buffer.from('From: a@x.test, b@y.test\r\n'))).toBeNull();
    expect(fromDomain(Buffer.from('From: a@x.test\r\nFrom: a@x.test\r\n'))).toBeNull();
    expect(fromDomain(Buffer.from('Subject: none\r\n'))).toBeNull();
  });

  it('signs a message that is all header block, and refuses to sign past the header limit', async () => {
    const keys = new DkimKeys({ acme: { dkim: [entry({})] } });
    const bare = 'From: alice@acme.test\r\nSubject: no body\r\n';
    const records = { 's1._domainkey.acme.test': dkimTxtRecord(readKey(files.rsa, 'rsa-sha256'), 'rsa-sha256') };
    const empty = collect(`${bare}\r\n`, keys, 'acme').sign('', null, new Date());
    if (empty.kind !== 'signed') throw new Error(empty.kind);
    expect((await verify(`${empty.fields}${bare}\r\n`, records))[0].result).toBe('pass');
    // No blank line at all: the whole message is its header block, the body empty (RFC 6376 3.4.3/3.4.4).
    const signed = collect(bare, keys, 'acme').sign('', null, new Date());
    if (signed.kind !== 'signed') throw new Error(signed.kind);
    expect(signed.fields.replace(/\r\n\s+/g, '')).toContain('bh=47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=');
    // A message opening with a blank line has no header block: unsigned, however long its body.
    const headless = new DkimCollector((d) => keys.keysFor('acme', d), 64);
    for (const part of ['\r', '\n', 'x'.repeat(200), '\r\n']) headless.feed(Buffer.from(part));
    headless.finish();
    expect(headless.sign('', null, new Date())).toEqual({ kind: 'unsigned' });
    const big = new DkimCollector((d) => keys.keysFor('acme', d), 64);
    big.feed(Buffer.from(MESSAGE));
    big.finish();
    expect(big.sign('', null, new Date())).toMatchObject({ kind: 'failed', why: 'a header block larger than 64 bytes cannot be DKIM-signed' });
  });

  it('reports a key that fails at signing and signs with the others', () => {
    const keys = new DkimKeys({ acme: { dkim: [entry({}), entry({ selector: 's2' })] } });
    const [first] = keys.keysFor('acme', 'acme.test');
    // A public key where the private one belongs makes crypto refuse.
    (first as { privateKey: KeyObject }).privateKey = createPublicKey(first.privateKey);
    const signed = collect(MESSAGE, keys, 'acme').sign('', null, new Date());
    expect(signed.kind).toBe('signed');
    if (signed.kind !== 'signed') return;
    expect(signed.failed.map((f) => f.key.selector)).toEqual(['s1']);
    expect(signed.fields).toContain('s=s2');
    const second = keys.keysFor('acme', 'acme.test')[1];
    (second as { privateKey: KeyObject }).privateKey = createPublicKey(second.privateKey);
    expect(collect(MESSAGE, keys, 'acme').sign('', null, new Date()).kind).toBe('failed');
  });
});

function readKey(path: string, algorithm: 'rsa-sha256' | 'ed25519-sha256') {
  const loaded = readSigningKey(path, algorithm);
  if ('problem' in loaded) throw new Error(loaded.problem);
  return loaded.key;
}

describe('the DKIM key settings', () => {
  const problems = (over: Record<string, unknown>) => {
    const r = dkimKeySchema.safeParse({ domain: 'acme.test', selector: 's1', key: files.rsa, ...over });
    return r.success ? [] : r.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`);
  };
  it('names the key of each mistake', () => {
    expect(problems({ key: join(dir, 'missing.pem') })).toEqual([`key: cannot read the key file ${join(dir, 'missing.pem')} (ENOENT)`]);
    expect(problems({ key: files.garbage })).toEqual([`key: ${files.garbage} holds no PEM private key`]);
    expect(problems({ key: files.ed })).toEqual([`key: ${files.ed} holds an ED25519 key, but algorithm rsa-sha256 needs an RSA key`]);
    expect(problems({ algorithm: 'ed25519-sha256' })).toEqual([`key: ${files.rsa} holds an RSA key, but algorithm ed25519-sha256 needs an ED25519 key`]);
    expect(problems({ key: files.tiny })).toEqual([`key: ${files.tiny} holds an RSA key of 512 bits: at least 1024 (2048 recommended, RFC 8301)`]);
    expect(problems({ headers: ['Subject'] })).toEqual(['headers: must include "From" (RFC 6376 section 5.4)']);
    expect(problems({ oversign: ['From', 'DKIM-Signature'] })).toEqual(['oversign.1: not DKIM-Signature: each signature is made without the others']);
    expect(problems({ algorithm: 'rsa-sha1' })[0]).toMatch(/^algorithm: /);
    expect(problems({ domain: 'localhost' })[0]).toMatch(/^domain: /);
    expect(problems({ selector: 'bad selector' })[0]).toMatch(/^selector: /);
    expect(problems({ expire: 'soon' })[0]).toMatch(/^expire: /);
    expect(problems({ size: 2048 })[0]).toMatch(/size/);
    expect(problems({})).toEqual([]);
  });

  it('warns about RSA keys under 2048 bits, naming the key', () => {
    const tenants = { acme: { dkim: [entry({}), entry({ selector: 's2', key: files.small })] } };
    expect(dkimWarnings(tenants)).toEqual(['tenants.acme.dkim[1].key: an RSA key of 1024 bits; use 2048 (RFC 8301 section 3.2)']);
  });
});
