// The DKIM section as an operator meets it: check-config names the key of every mistake (and warns
// about weak keys), `ichidan dkim record` prints what to publish in DNS, and a reload whose key file
// is gone keeps the keys in force.
import { execFile } from 'node:child_process';
import { generateKeyPairSync } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { dkimTxtRecord, readSigningKey } from '../../queue/accept/accept-dkim-config.js';
import { zoneStrings } from './cli-dkim.js';

const run = promisify(execFile);
const cli = join(import.meta.dirname, '..', '..', 'dist', 'mta', 'mta-main.js');
let dir: string;
const key: Record<string, string> = {};

async function ichidan(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const out = await run(process.execPath, [cli, ...args]);
    return { code: 0, ...out };
  } catch (err) {
    const e = err as { code: number; stdout: string; stderr: string };
    return { code: e.code, stdout: e.stdout, stderr: e.stderr };
  }
}

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'ichidan-dkim-cli-'));
  const pems = {
    rsa: generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey,
    weak: generateKeyPairSync('rsa', { modulusLength: 1024 }).privateKey,
    tiny: generateKeyPairSync('rsa', { modulusLength: 512 }).privateKey,
    ed: generateKeyPairSync('ed25519').privateKey,
  };
  for (const [name, k] of Object.entries(pems)) {
    key[name] = join(dir, `${name}.pem`);
    await writeFile(key[name], k.export({ format: 'pem', type: 'pkcs8' }) as string);
  }
});
afterAll(() => rm(dir, { recursive: true, force: true }));

async function configFile(name: string, tenants: string): Promise<string> {
  const file = join(dir, name);
  await writeFile(file, `dataDir: ${dir}/data\ntenants:\n${tenants}`);
  return file;
}

describe('check-config and the dkim section', () => {
  it('names the key of every mistake', async () => {
    const file = await configFile('bad.yaml', [
      '  acme:',
      '    dkim:',
      `      - { domain: acme.test, selector: s1, key: ${dir}/missing.pem }`,
      `      - { domain: acme.test, selector: s2, key: ${key.ed} }`,
      `      - { domain: acme.test, selector: s3, key: ${key.tiny} }`,
      `      - { domain: acme.test, selector: s4, key: ${key.rsa}, algorithm: ed25519-sha256 }`,
      `      - { domain: acme.test, selector: s5, key: ${key.rsa}, headers: [Subject], expire: soon, size: 2048 }`,
      `      - { domain: acme.test, selector: s6, key: ${key.rsa} }`,
      `      - { domain: acme.test, selector: s6, key: ${key.rsa} }`,
      '  beta:',
      '    dkim:',
      `      - { domain: acme.test, selector: b1, key: ${key.rsa} }`,
      '',
    ].join('\n'));
    const out = await ichidan(['check-config', file]);
    expect(out.code).toBe(1);
    const lines = out.stderr.split('\n').map((l) => l.trim().replace(/^- /, ''));
    expect(lines).toContain(`tenants.acme.dkim[0].key: cannot read the key file ${dir}/missing.pem (ENOENT)`);
    expect(lines).toContain(`tenants.acme.dkim[1].key: ${key.ed} holds an ED25519 key, but algorithm rsa-sha256 needs an RSA key`);
    expect(lines).toContain(`tenants.acme.dkim[2].key: ${key.tiny} holds an RSA key of 512 bits: at least 1024 (2048 recommended, RFC 8301)`);
    expect(lines).toContain(`tenants.acme.dkim[3].key: ${key.rsa} holds an RSA key, but algorithm ed25519-sha256 needs an ED25519 key`);
    expect(lines).toContain('tenants.acme.dkim[4].headers: must include "From" (RFC 6376 section 5.4)');
    expect(lines.some((l) => l.startsWith('tenants.acme.dkim[4].expire: '))).toBe(true);
    expect(lines).toContain('tenants.acme.dkim[4].size: unknown key');
  });

  it('names cross-key mistakes: a selector twice, a domain signed by two tenants', async () => {
    const file = await configFile('cross.yaml', [
      '  acme:',
      '    dkim:',
      `      - { domain: acme.test, selector: s6, key: ${key.rsa} }`,
      `      - { domain: acme.test, selector: s6, key: ${key.ed}, algorithm: ed25519-sha256 }`,
      '  beta:',
      '    dkim:',
      `      - { domain: acme.test, selector: b1, key: ${key.rsa} }`,
      '',
    ].join('\n'));
    const out = await ichidan(['check-config', file]);
    expect(out.code).toBe(1);
    expect(out.stderr).toContain('tenants.acme.dkim[1].selector: s6._domainkey.acme.test is already configured above');
    expect(out.stderr).toContain('tenants.beta.dkim[0].domain: domain "acme.test" is already signed for by tenant "acme"');
  });

  it('accepts a good section, warning about an RSA key under 2048 bits', async () => {
    const file = await configFile('good.yaml', [
      '  acme:',
      '    dkim:',
      `      - { domain: acme.test, selector: s1, key: ${key.rsa} }`,
      `      - { domain: acme.test, selector: s2, key: ${key.weak} }`,
      `      - { domain: acme.test, selector: e1, key: ${key.ed}, algorithm: ed25519-sha256, oversign: [], expire: 30d, subdomains: true }`,
      '',
    ].join('\n'));
    const out = await ichidan(['check-config', file]);
    expect(out.code).toBe(0);
    expect(out.stdout).toMatch(/: ok /);
    expect(out.stderr).toContain('warning: tenants.acme.dkim[1].key: an RSA key of 1024 bits; use 2048 (RFC 8301 section 3.2)');
    expect(out.stderr).not.toContain('dkim[0]');
  });
});

describe('ichidan dkim record', () => {
  it('prints the TXT record of a configured key, in strings of at most 255 bytes', async () => {
    const file = await configFile('record.yaml', [
      '  acme:',
      '    dkim:',
      `      - { domain: acme.test, selector: s1, key: ${key.rsa} }`,
      `      - { domain: acme.test, selector: e1, key: ${key.ed}, algorithm: ed25519-sha256 }`,
      '',
    ].join('\n'));
    const rsa = await ichidan(['dkim', 'record', '-c', file, '--tenant', 'acme', '--domain', 'acme.test', '--selector', 's1']);
    expect(rsa.code).toBe(0);
    const loaded = readSigningKey(key.rsa, 'rsa-sha256');
    if ('problem' in loaded) throw new Error(loaded.problem);
    const text = dkimTxtRecord(loaded.key, 'rsa-sha256');
    expect(rsa.stdout).toBe(`s1._domainkey.acme.test. IN TXT ( ${zoneStrings(text)} )\n`);
    expect(text).toMatch(/^v=DKIM1; k=rsa; p=[A-Za-z0-9+/=]{390,}$/);
    expect(rsa.stdout.match(/"[^"]*"/g)!.every((s) => s.length - 2 <= 255)).toBe(true);
    const ed = await ichidan(['dkim', 'record', '-c', file, '--tenant', 'acme', '--domain', 'acme.test', '--selector', 'e1']);
    expect(ed.stdout).toMatch(/^e1\._domainkey\.acme\.test\. IN TXT \( "v=DKIM1; k=ed25519; p=[A-Za-z0-9+/]{43}=" \)\n$/);
    const none = await ichidan(['dkim', 'record', '-c', file, '--tenant', 'acme', '--domain', 'acme.test', '--selector', 'x9']);
    expect(none.code).toBe(1);
    expect(none.stderr).toContain('tenants.acme.dkim has no key for x9._domainkey.acme.test (keys: s1._domainkey.acme.test, e1._domainkey.acme.test)');
    expect((await ichidan(['dkim', 'record', '-c', file, '--tenant', 'nobody', '--domain', 'acme.test', '--selector', 's1'])).stderr).toContain('no tenant "nobody"');
    expect((await ichidan(['dkim', 'record', '-c', file])).code).toBe(2);
  });
});
