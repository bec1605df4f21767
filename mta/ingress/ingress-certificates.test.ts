import { execFile } from 'node:child_process';
import { mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createSecureContext } from 'node:tls';
import { promisify } from 'node:util';
import { beforeAll, describe, expect, it } from 'vitest';
import { makeTestCa } from '../../test/helpers/test-ca.js';
import { ConfigError, parseConfig } from '../mta-config.js';
import { checkCertificates, pickByName } from './ingress-certificates.js';

const certificateProblems = (config: Parameters<typeof checkCertificates>[0]) => checkCertificates(config).problems;

function problems(input: unknown): string[] {
  try {
    parseConfig(input);
    return [];
  } catch (err) {
    if (err instanceof ConfigError) return err.problems;
    throw err;
  }
}

describe('certificate and PROXY protocol settings', () => {
  const mx = { name: 'mx', role: 'mx', port: 25 };
  it.each([
    [{ listeners: [{ ...mx, cert: '/c.pem' }] }, "listeners[0].key: a listener's cert and key go together"],
    [{ listeners: [{ ...mx, key: '/k.pem' }] }, "listeners[0].cert: a listener's cert and key go together"],
    [{ listeners: [{ ...mx, tls: 'none', cert: '/c.pem', key: '/k.pem' }] }, 'listeners[0].cert: this listener has tls: none and offers no certificate'],
    [{ listeners: [{ ...mx, proxyProtocol: { from: [] } }] }, 'listeners[0].proxyProtocol.from: at least one load balancer address'],
    [{ listeners: [{ ...mx, proxyProtocol: { from: ['10.0.0.0/33'] } }] }, 'listeners[0].proxyProtocol.from[0]: an address or network'],
    [{ listeners: [{ ...mx, proxyProtocol: { from: ['10.0.0.1'], version: 'v3' } }] }, 'listeners[0].proxyProtocol.version: must be one of "v1", "v2", "any"'],
    [{ listeners: [{ ...mx, proxyProtocol: { from: ['10.0.0.1'], timeout: 'soon' } }] }, 'listeners[0].proxyProtocol.timeout: a duration such as'],
    [{ listeners: [{ ...mx, proxyProtocol: { from: ['10.0.0.1'], timeout: 0 } }] }, 'listeners[0].proxyProtocol.timeout: a duration above 0'],
    [{ listeners: [{ ...mx, proxyProtocol: { from: ['10.0.0.1'], form: [] } }] }, 'listeners[0].proxyProtocol.form: unknown key'],
    [{ listeners: [{ name: 'p', role: 'proxy', port: 10025, proxyProtocol: { from: ['10.0.0.1'] } }] }, 'listeners[0].proxyProtocol: a proxy listener learns where connections go from the kernel'],
    [{ tls: { sni: { 'bad name!': { cert: '/c', key: '/k' } } } }, 'tls.sni.bad name!: a host name such as "mx.example.com" or "*.example.com"'],
    [{ tls: { sni: { 'mx.example.com': { cert: '/c' } } } }, 'tls.sni.mx.example.com.key:'],
    [{ tls: { sni: { 'mx.example.com': { cert: '/c', key: '/k', chain: '/x' } } } }, 'tls.sni.mx.example.com.chain: unknown key'],
  ])('refuses %j naming the key', (input, expected) => {
    expect(problems(input).join('\n')).toContain(expected);
  });

  it('takes a listener with its own pair and a PROXY protocol block, with the defaults', () => {
    const c = parseConfig({ listeners: [{ ...mx, cert: '/c.pem', key: '/k.pem', proxyProtocol: { from: ['10.0.0.0/8'] } }] });
    expect(c.listeners[0].proxyProtocol).toEqual({ from: ['10.0.0.0/8'], version: 'any', timeout: 5000 });
    expect(c.tls.sni).toEqual({});
  });
});

describe('certificate files', () => {
  let dir: string;
  const path = (name: string) => join(dir, name);
  let good: { cert: string; key: string };
  let other: { cert: string; key: string };

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'ichidan-certfiles-'));
    const ca = await makeTestCa();
    good = await ca.issue(['mx.example.test']);
    other = await ca.issue(['other.example.test']);
    await writeFile(path('good.crt'), good.cert);
    await writeFile(path('good.key'), good.key);
    await writeFile(path('other.key'), other.key);
    await writeFile(path('garbage'), 'garbage\n');
  }, 30_000);

  const withTls = (tls: unknown, listeners?: unknown) => parseConfig({ tls, ...(listeners ? { listeners } : {}) });

  it('finds nothing wrong with readable, matching pairs', () => {
    expect(certificateProblems(withTls({ cert: path('good.crt'), key: path('good.key'), sni: { 'mx.example.test': { cert: path('good.crt'), key: path('good.key') } } }))).toEqual([]);
    expect(certificateProblems(withTls({}))).toEqual([]);
  });

  it('warns, naming the key, about an SNI pair that is not for its name', () => {
    const sni = { 'mx.example.test': { cert: path('good.crt'), key: path('good.key') }, 'mail.example.test': { cert: path('good.crt'), key: path('good.key') } };
    expect(checkCertificates(withTls({ sni }))).toEqual({ problems: [], warnings: [`tls.sni["mail.example.test"].cert: the certificate in ${path('good.crt')} is not for mail.example.test`] });
  });

  it('warns, naming the key, about an expired certificate', async () => {
    const { generate } = await import('selfsigned');
    const old = await generate([{ name: 'commonName', value: 'mx.example.test' }], {
      keySize: 2048, notBeforeDate: new Date(Date.now() - 3 * 86_400_000), notAfterDate: new Date(Date.now() - 86_400_000),
    } as never);
    await writeFile(path('old.crt'), old.cert);
    await writeFile(path('old.key'), old.private);
    const { problems, warnings } = checkCertificates(withTls({ cert: path('old.crt'), key: path('old.key') }));
    expect(problems).toEqual([]);
    expect(warnings).toEqual([expect.stringMatching(new RegExp(`^tls\\.cert: the certificate in ${path('old.crt').replace(/[.]/g, '\\.')} expired on `))]);
  });

  it('names the key of every problem, all at once', () => {
    const found = certificateProblems(withTls(
      { cert: path('missing.crt'), key: path('good.key'), sni: { 'a.example.test': { cert: path('garbage'), key: path('good.key') }, 'b.example.test': { cert: path('good.crt'), key: path('other.key') } } },
      [{ name: 'mx', role: 'mx', port: 25, cert: path('good.crt'), key: path('garbage') }],
    ));
    expect(found).toEqual([
      `tls.cert: cannot read ${path('missing.crt')}: ENOENT`,
      `tls.sni["a.example.test"].cert: ${path('garbage')} holds no PEM certificate`,
      expect.stringMatching(new RegExp(`^tls\\.sni\\["b\\.example\\.test"\\]\\.key: ${path('other.key').replace(/[.]/g, '\\.')} is not the key of the certificate in `)),
      `listeners[0].key: ${path('garbage')} holds no PEM private key (or it is encrypted)`,
    ]);
  });

  it('picks a pair by exact name, then by the parent\'s wildcard, never two levels up', () => {
    const exact = createSecureContext({ cert: good.cert, key: good.key });
    const wild = createSecureContext({ cert: other.cert, key: other.key });
    const byName = new Map([['mx.example.test', exact], ['*.example.test', wild]]);
    expect(pickByName(byName, 'MX.example.test.')).toBe(exact);
    expect(pickByName(byName, 'smtp.example.test')).toBe(wild);
    expect(pickByName(byName, 'a.smtp.example.test')).toBeUndefined();
    expect(pickByName(byName, 'example.test')).toBeUndefined();
  });

  it('`ichidan check-config` and `start` exit 1 naming the key of a certificate file that is not one', async () => {
    const file = path('bad-cert.yaml');
    await writeFile(file, `dataDir: ${path('data')}\ntls:\n  cert: ${path('garbage')}\n  key: ${path('good.key')}\n`);
    const cli = join(import.meta.dirname, '..', '..', 'dist', 'mta', 'mta-main.js');
    const err = await promisify(execFile)(process.execPath, [cli, 'check-config', file]).catch((e: { code: number; stderr: string }) => e);
    expect((err as { code: number }).code).toBe(1);
    expect((err as { stderr: string }).stderr).toContain(`tls.cert: ${path('garbage')} holds no PEM certificate`);
    // `start` refuses it too, before it listens, with the same words.
    const start = await promisify(execFile)(process.execPath, [cli, 'start', '-c', file]).catch((e: { code: number; stderr: string }) => e);
    expect((start as { code: number }).code).toBe(1);
    expect((start as { stderr: string }).stderr).toBe(`${file}: invalid configuration\n  - tls.cert: ${path('garbage')} holds no PEM certificate\n`);
  });
});
