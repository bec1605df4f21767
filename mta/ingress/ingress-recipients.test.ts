// Recipient validation without the network: the rule order (postmaster, catch-all, list, file,
// probe), the probe cache (TTLs, the least recently used dropped, "unavailable" never kept,
// concurrent probes shared), the config's mistakes named by key.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { afterAll, describe, expect, it } from 'vitest';
import { ConfigError, parseConfig } from '../mta-config.js';
import { RecipientCheck } from './ingress-recipients.js';
import { RecipientVerifier, type ProbeAnswer, type ProbeFn } from './ingress-recipients-verify.js';
import { listed, parseRecipientFile } from './ingress-recipients-list.js';

const log = pino({ level: 'silent' });
const dir = mkdtempSync(join(tmpdir(), 'ichidan-rcpt-unit-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** A probe answering from `known`, counting its calls, taking `ms`. */
function fakeProbe(known: Record<string, ProbeAnswer>, ms = 0): { run: ProbeFn; calls: string[] } {
  const calls: string[] = [];
  const run: ProbeFn = async (_v, address) => {
    calls.push(address);
    await new Promise((r) => setTimeout(r, ms));
    return { answer: known[address.toLowerCase()] ?? 'unknown', detail: 'fake' };
  };
  return { run, calls };
}

const verify = { host: '127.0.0.9', protocol: 'lmtp', positiveTtl: '1h', negativeTtl: '1m' };

describe('recipient rules', () => {
  const file = join(dir, 'users');
  writeFileSync(file, 'filed@a.test # from the file\n');
  const config = parseConfig({
    tenants: {
      t: {
        domains: ['a.test', 'b.test', 'c.test', 'd.test'],
        recipients: {
          list: ['listed@a.test', '@c.test'], file, delimiter: '+',
          domains: { 'b.test': { catchAll: true }, 'd.test': { verify, unavailable: 'tempfail-451' } },
        },
      },
      open: { domains: ['open.test'] },
    },
  });
  const probe = fakeProbe({ 'known@d.test': 'known', 'down@d.test': 'unavailable' });
  const counted: string[] = [];
  const check = new RecipientCheck(config, { verifier: new RecipientVerifier(log, () => undefined, probe.run), log, count: (r, by) => counted.push(`${r}/${by}`) });

  it.each([
    ['listed@a.test', 'a.test', null, 'accepted/list'],
    ['LISTED@A.test', 'a.test', null, 'accepted/list'],
    ['filed@a.test', 'a.test', null, 'accepted/file'],
    ['listed+tag@a.test', 'a.test', null, 'accepted/list'],
    ['filed+tag@a.test', 'a.test', null, 'accepted/file'],
    ['Postmaster@a.test', 'a.test', null, 'accepted/postmaster'],
    ['stranger@a.test', 'a.test', '550 5.1.1', 'unknown/file'],
    ['anyone@b.test', 'b.test', null, 'accepted/catchall'],
    ['anyone@c.test', 'c.test', null, 'accepted/list'],
    ['known@d.test', 'd.test', null, 'accepted/verify'],
    ['known@d.test', 'd.test', null, 'accepted/cache'],
    ['gone@d.test', 'd.test', '550 5.1.1', 'unknown/verify'],
    ['down@d.test', 'd.test', '451 4.3.0', 'unavailable/verify'],
    ['whoever@open.test', 'open.test', null, null],
  ])('%s', async (address, domain, reply, how) => {
    counted.length = 0;
    const r = await check.check(address, domain);
    expect(r && `${r.code} ${r.enhanced}`).toBe(reply);
    expect(counted[0] ?? null).toBe(how);
  });

  it('the d.test rule alone probes: the listed, filed and catch-all domains never do', () => {
    expect(probe.calls).toEqual(['known@d.test', 'gone@d.test', 'down@d.test']);
  });

  it('a file that cannot be read at start makes its domains answer "unavailable" (450), never accept', async () => {
    const missing = join(dir, 'later');
    const cfg = parseConfig({ tenants: { t: { domains: ['a.test'], recipients: { list: ['x@a.test'] } } } });
    const patched = { ...cfg, tenants: { t: { ...cfg.tenants.t, recipients: { ...cfg.tenants.t.recipients!, list: [], file: missing } } } };
    const c = new RecipientCheck(patched, { verifier: new RecipientVerifier(log), log });
    expect(await c.check('x@a.test', 'a.test')).toMatchObject({ code: 450, enhanced: '4.1.1' });
  });
});

describe('the probe cache', () => {
  const v = parseConfig({ tenants: { t: { domains: ['a.test'], recipients: { verify: { ...verify, cacheSize: 2 } } } } }).tenants.t.recipients!.verify!;

  it('keeps "known" for positiveTtl and "unknown" for negativeTtl, never "unavailable"', async () => {
    let now = 0;
    const probe = fakeProbe({ 'k@a.test': 'known', 'down@a.test': 'unavailable' });
    const verifier = new RecipientVerifier(log, () => undefined, probe.run, () => now);
    expect((await verifier.verify(v, 'k@a.test', 'h')).source).toBe('probe');
    expect((await verifier.verify(v, 'u@a.test', 'h')).answer).toBe('unknown');
    now = 59_000;
    expect(await verifier.verify(v, 'k@a.test', 'h')).toEqual({ answer: 'known', source: 'cache' });
    expect(await verifier.verify(v, 'u@a.test', 'h')).toEqual({ answer: 'unknown', source: 'cache' });
    now = 61_000;
    expect((await verifier.verify(v, 'u@a.test', 'h')).source).toBe('probe');
    now = 3_600_001;
    expect((await verifier.verify(v, 'k@a.test', 'h')).source).toBe('probe');
    await verifier.verify(v, 'down@a.test', 'h');
    await verifier.verify(v, 'down@a.test', 'h');
    expect(probe.calls.filter((c) => c === 'down@a.test')).toHaveLength(2);
  });

  it('holds at most cacheSize answers, dropping the least recently used', async () => {
    const probe = fakeProbe({});
    const verifier = new RecipientVerifier(log, () => undefined, probe.run);
    await verifier.verify(v, 'one@a.test', 'h');
    await verifier.verify(v, 'two@a.test', 'h');
    await verifier.verify(v, 'one@a.test', 'h');
    await verifier.verify(v, 'three@a.test', 'h');
    expect(verifier.size).toBe(2);
    expect((await verifier.verify(v, 'one@a.test', 'h')).source).toBe('cache');
    expect((await verifier.verify(v, 'two@a.test', 'h')).source).toBe('probe');
  });

  it('shares one probe among concurrent checks of one address (case folded)', async () => {
    const probe = fakeProbe({ 'k@a.test': 'known' }, 50);
    const counts: string[] = [];
    const verifier = new RecipientVerifier(log, (a) => counts.push(a), probe.run);
    const answers = await Promise.all(['k@a.test', 'K@a.test', 'k@a.test'].map((a) => verifier.verify(v, a, 'h')));
    expect(answers.map((a) => a.answer)).toEqual(['known', 'known', 'known']);
    expect(probe.calls).toHaveLength(1);
    expect(counts).toEqual(['known']);
  });
});

describe('recipient settings', () => {
  const problems = (tenant: Record<string, unknown>): string[] => {
    try {
      parseConfig({ tenants: { t: { domains: ['a.test', 'b.test'], ...tenant } } });
      return [];
    } catch (err) {
      return (err as ConfigError).problems;
    }
  };

  it('names the key of each mistake', () => {
    expect(problems({ recipients: {} })).toEqual(['tenants.t.recipients: give list, file, verify or catchAll (or rules under domains): with none, every recipient would be refused']);
    expect(problems({ recipients: { list: ['x@other.test', 'not an address'] } })).toEqual([
      'tenants.t.recipients.list[1]: an address such as "user@example.com", or "@example.com" for a whole domain',
      'tenants.t.recipients.list[0]: "x@other.test" is not in a.test, b.test, which this rule is for',
    ]);
    expect(problems({ recipients: { list: ['x@other.test'] } })).toEqual(['tenants.t.recipients.list[0]: "x@other.test" is not in a.test, b.test, which this rule is for']);
    expect(problems({ recipients: { domains: { 'c.test': { catchAll: true }, 'b.test': {} } } })).toEqual([
      'tenants.t.recipients.domains.c.test: the tenant does not host "c.test" (domains: a.test, b.test)',
      'tenants.t.recipients.domains.b.test: give list, file, verify or catchAll: with none, every recipient would be refused',
    ]);
    expect(problems({ recipients: { domains: { 'b.test': { list: ['x@a.test'] } } } })).toEqual(['tenants.t.recipients.domains.b.test.list[0]: "x@a.test" is not in b.test, which this rule is for']);
    expect(problems({ recipients: { file: join(dir, 'nope') } })).toEqual([`tenants.t.recipients.file: ${join(dir, 'nope')}: cannot be read`]);
    const bad = join(dir, 'bad');
    writeFileSync(bad, 'ok@a.test\n\nnot-an-address\n');
    expect(problems({ recipients: { file: bad } })).toEqual([`tenants.t.recipients.file: ${bad}: line 3: "not-an-address" is not an address such as "user@example.com" or "@example.com"`]);
    expect(problems({ recipients: { verify: { host: 'mbx', protocol: 'imap', positiveTtl: 'soon', port: 0 }, unavailable: 'bounce' } })).toEqual(expect.arrayContaining([
      'tenants.t.recipients.verify.protocol: must be one of "lmtp", "smtp"',
      expect.stringMatching(/^tenants\.t\.recipients\.verify\.positiveTtl: a duration such as/),
      expect.stringMatching(/^tenants\.t\.recipients\.verify\.port: /),
      'tenants.t.recipients.unavailable: must be one of "tempfail-450", "tempfail-451"',
    ]));
    expect(problems({ recipients: { verify: { host: 'mbx', sender: 'x> RCPT TO:<y@z' } } })).toEqual(['tenants.t.recipients.verify.sender: an address such as "verify@example.com", or "" for the null sender']);
    expect(problems({ recipients: { catchAll: true, verfy: {} } })).toEqual(['tenants.t.recipients.verfy: unknown key']);
  });

  it('looks an address up without its extension when a delimiter is set', () => {
    const entries = new Set(['ann@a.test', 'bob-x@a.test']);
    expect(listed(entries, 'ann+news@a.test')).toBe(false);
    expect(listed(entries, 'ann+news@a.test', '+')).toBe(true);
    expect(listed(entries, 'ANN-list+x@a.test', '+-')).toBe(true);
    expect(listed(entries, 'bob-x+y@a.test', '+')).toBe(true);
    expect(listed(entries, '+ann@a.test', '+')).toBe(false);
    expect(listed(entries, 'carol+ann@a.test', '+')).toBe(false);
    expect(problems({ recipients: { list: ['ann@a.test'], delimiter: 'x' } })).toEqual([
      'tenants.t.recipients.delimiter: one to eight characters such as "+" or "+-" (not letters, digits, "@" or spaces)',
    ]);
  });

  it('parses a recipient file: comments, blank lines, case', () => {
    expect(parseRecipientFile('# head\nAnn@A.test  # ann\n\n@b.test\n')).toEqual(['ann@a.test', '@b.test']);
  });
});

describe('auth.backend settings', () => {
  const problems = (auth: Record<string, unknown>, extra: Record<string, unknown> = {}): string[] => {
    try {
      parseConfig({ tenants: { t: { domains: ['a.test'] } }, auth, ...extra });
      return [];
    } catch (err) {
      return (err as ConfigError).problems;
    }
  };

  it('names the key of each mistake', () => {
    expect(problems({ backend: { type: 'dovecot', socket: '/run/dovecot/auth-client', tenant: 't' } })).toEqual([]);
    expect(problems({ backend: { type: 'ldap' } })).toEqual(['auth.backend.type: must be "yaml" or "dovecot"']);
    expect(problems({ backend: { type: 'dovecot', socket: 'auth-client', tenant: 't' } })).toEqual(['auth.backend.socket: an absolute path of a unix socket, or "host:port"']);
    expect(problems({ backend: { type: 'dovecot', socket: '/s', tenant: 'x', domains: { 'b.test': 'y' } } })).toEqual([
      'auth.backend.tenant: no tenant "x" (tenants: t)',
      'auth.backend.domains.b.test: no tenant "y" (tenants: t)',
    ]);
    expect(problems({ backend: { type: 'dovecot', socket: '/s' } })).toEqual([
      'auth.backend.tenant: say whose mail a Dovecot login sends: a tenant, or tenants by the login\'s domain (auth.backend.domains)',
    ]);
    expect(problems({ backend: { type: 'dovecot', socket: '127.0.0.1:12345', tenant: 't', timeout: 'later' } })).toEqual([
      expect.stringMatching(/^auth\.backend\.timeout: a duration such as/),
    ]);
    expect(problems({ backend: { type: 'dovecot', socket: '/s', tenant: 't' } }, { users: [{ name: 'u', password: '$2b$10$' + 'a'.repeat(53), tenant: 't' }] })).toEqual([
      'users: with auth.backend dovecot, Dovecot checks every login: give these users to Dovecot instead',
    ]);
  });
});

describe('ichidan check-config on these sections', () => {
  it('exits 1 naming each key: first what the schema says, then what spans sections', async () => {
    const { execFile } = await import('node:child_process');
    const { promisify } = await import('node:util');
    const cli = join(import.meta.dirname, '..', '..', 'dist', 'mta', 'mta-main.js');
    const check = async (lines: string[]) => {
      const file = join(dir, 'bad.yaml');
      writeFileSync(file, lines.join('\n') + '\n');
      const err = await promisify(execFile)(process.execPath, [cli, 'check-config', file]).catch((e) => e);
      expect(err.code).toBe(1);
      return String(err.stderr);
    };
    const schema = await check([
      'auth: { backend: { type: dovecot, socket: relative/path, timeout: soon } }',
      'tenants: { t: { domains: [a.test], recipients: { verify: { host: mbx, protocol: pop3 }, unavailable: bounce } } }',
    ]);
    for (const key of ['auth.backend.socket:', 'auth.backend.timeout:', 'tenants.t.recipients.verify.protocol:', 'tenants.t.recipients.unavailable:']) expect(schema).toContain(key);
    const spanning = await check([
      'auth: { backend: { type: dovecot, socket: /run/dovecot/auth-client, tenant: nobody } }',
      'tenants: { t: { domains: [a.test], recipients: { list: [x@b.test], file: /nonexistent/users, domains: { c.test: { catchAll: true } } } } }',
    ]);
    for (const key of ['auth.backend.tenant: no tenant "nobody"', 'tenants.t.recipients.list[0]:', 'tenants.t.recipients.file: /nonexistent/users: cannot be read', 'tenants.t.recipients.domains.c.test:']) expect(spanning).toContain(key);
  });
});
