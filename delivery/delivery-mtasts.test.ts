import type { Resolver } from 'node:dns/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { makeTestCa, type TestCa } from '../test/helpers/test-ca.js';
import { startPolicyServer, type PolicyServer } from '../test/helpers/policy-server.js';
import { MtaSts, mxMatches, parseStsPolicy, parseStsRecord, StsPolicyCache } from './delivery-mtasts.js';

describe('the _mta-sts TXT record', () => {
  it.each([
    [[['v=STSv1; id=20160831085700Z;']], '20160831085700Z'],
    [[['v=STSv1; ', 'id=abc123']], 'abc123'],
    [[['v=spf1 -all'], ['v=STSv1; id=x1']], 'x1'],
    [[['v=STSv1; id=a'], ['v=STSv1; id=b']], null],
    [[['v=STSv1; id=has-dash']], null],
    [[['v=STSv1;']], null],
    [[['v=STSv2; id=a']], null],
    [[[' v=STSv1; id=a']], null],
    [[], null],
  ])('%j → %s', (records, id) => {
    expect(parseStsRecord(records)).toBe(id);
  });
});

describe('the policy body', () => {
  it('reads version, mode, max_age and every mx, ignoring unknown keys', () => {
    expect(parseStsPolicy('version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\nmx: *.Example.NET.\r\nmax_age: 86400\r\nextra: 1\r\n'))
      .toEqual({ mode: 'enforce', mx: ['mail.example.com', '*.example.net'], maxAge: 86400 });
  });

  it('caps max_age at a year', () => {
    expect(parseStsPolicy('version: STSv1\nmode: none\nmax_age: 9999999999')).toMatchObject({ maxAge: 31557600 });
  });

  it.each([
    ['mode: enforce\nmx: a.test\nmax_age: 1', /version/],
    ['version: STSv1\nmode: strict\nmx: a.test\nmax_age: 1', /mode/],
    ['version: STSv1\nmode: enforce\nmx: a.test', /max_age/],
    ['version: STSv1\nmode: enforce\nmax_age: 1', /without any mx/],
    ['version: STSv1\nmode: testing\nmx: a.*.test\nmax_age: 1', /mx pattern/],
    ['<html>not a policy</html>', /malformed/],
  ])('refuses %j', (text, why) => {
    expect(parseStsPolicy(text)).toMatch(why);
  });
});

describe('MX patterns (RFC 8461 4.1)', () => {
  it.each([
    [['mx.example.com'], 'MX.example.com.', true],
    [['mx.example.com'], 'mx2.example.com', false],
    [['*.example.com'], 'mail.example.com', true],
    [['*.example.com'], 'example.com', false],
    [['*.example.com'], 'a.b.example.com', false],
    [['*.example.com'], 'mail.example.org', false],
    [['a.test', '*.example.com'], 'a.test', true],
  ])('%j matches %s: %s', (patterns, host, expected) => {
    expect(mxMatches(patterns, host)).toBe(expected);
  });
});

describe('fetching and caching policies', () => {
  let ca: TestCa;
  let server: PolicyServer;
  const txt = new Map<string, string[][]>();
  const queries: string[] = [];
  const resolver = {
    async resolveTxt(name: string) {
      queries.push(`TXT ${name}`);
      const r = txt.get(name);
      if (!r) throw Object.assign(new Error('nx'), { code: 'ENOTFOUND' });
      return r;
    },
    async resolve4(name: string) {
      queries.push(`A ${name}`);
      if (name.startsWith('mta-sts.')) return ['127.0.0.31'];
      throw Object.assign(new Error('nx'), { code: 'ENOTFOUND' });
    },
    async resolve6(name: string) {
      queries.push(`AAAA ${name}`);
      throw Object.assign(new Error('nodata'), { code: 'ENODATA' });
    },
  } as unknown as Resolver;
  const policy = (mode: string, mx = 'mx.a.test', maxAge = 3600) => `version: STSv1\nmode: ${mode}\nmx: ${mx}\nmax_age: ${maxAge}\n`;

  beforeAll(async () => {
    ca = await makeTestCa();
    server = await startPolicyServer('127.0.0.31', await ca.issue(['mta-sts.a.test', 'mta-sts.b.test', 'mta-sts.html.test']), {
      'mta-sts.a.test': policy('enforce'),
      'mta-sts.b.test': policy('testing', '*.b.test', 60),
    });
  });
  afterAll(() => server?.close());

  function sts(now = () => Date.now(), cache = new StsPolicyCache()) {
    return new MtaSts(resolver, cache, { ca: [ca.cert], port: server.port, now });
  }

  it('fetches over verified HTTPS with the name resolved through the given resolver', async () => {
    txt.set('_mta-sts.a.test', [['v=STSv1; id=1']]);
    const found = await sts().lookup('A.test');
    expect(found).toEqual({ policy: { mode: 'enforce', mx: ['mx.a.test'], maxAge: 3600 }, source: 'fetched' });
    expect(queries).toEqual(expect.arrayContaining(['TXT _mta-sts.a.test', 'A mta-sts.a.test']));
  });

  it('refuses a policy server whose certificate is not trusted', async () => {
    txt.set('_mta-sts.a.test', [['v=STSv1; id=1']]);
    const untrusted = new MtaSts(resolver, new StsPolicyCache(), { ca: undefined, port: server.port });
    expect(await untrusted.lookup('a.test')).toMatchObject({ policy: null, reason: expect.stringMatching(/policy fetch failed/) });
  });

  it('uses the cache until the id changes or max_age passes', async () => {
    let now = 1_000_000;
    const s = sts(() => now);
    txt.set('_mta-sts.b.test', [['v=STSv1; id=1']]);
    const before = server.requests.get('mta-sts.b.test') ?? 0;
    expect(await s.lookup('b.test')).toMatchObject({ source: 'fetched' });
    expect(await s.lookup('b.test')).toMatchObject({ source: 'cached' });
    expect(server.requests.get('mta-sts.b.test')).toBe(before + 1);
    txt.set('_mta-sts.b.test', [['v=STSv1; id=2']]);
    expect(await s.lookup('b.test')).toMatchObject({ source: 'fetched' });
    now += 61_000;
    expect(await s.lookup('b.test')).toMatchObject({ source: 'fetched' });
    expect(server.requests.get('mta-sts.b.test')).toBe(before + 3);
  });

  it('keeps an unexpired cached policy when the record or the server goes away, not an expired one', async () => {
    let now = 2_000_000;
    const s = sts(() => now);
    txt.set('_mta-sts.b.test', [['v=STSv1; id=5']]);
    await s.lookup('b.test');
    server.down = true;
    try {
      txt.set('_mta-sts.b.test', [['v=STSv1; id=6']]);
      expect(await s.lookup('b.test')).toMatchObject({ source: 'cached', policy: { mode: 'testing' } });
      txt.delete('_mta-sts.b.test');
      expect(await s.lookup('b.test')).toMatchObject({ source: 'cached' });
      now += 61_000;
      expect(await s.lookup('b.test')).toMatchObject({ policy: null });
    } finally {
      server.down = false;
    }
  });

  it('takes no policy from a 404, a non-text answer or a domain without a record', async () => {
    txt.set('_mta-sts.html.test', [['v=STSv1; id=1']]);
    expect(await sts().lookup('html.test')).toMatchObject({ policy: null, reason: expect.stringMatching(/HTTP 404/) });
    server.policies.set('mta-sts.html.test', '<html></html>');
    expect(await sts().lookup('html.test')).toMatchObject({ policy: null, reason: expect.stringMatching(/invalid policy/) });
    expect(await sts().lookup('none.test')).toMatchObject({ policy: null, reason: expect.stringMatching(/no _mta-sts record/) });
    expect(queries).not.toContain('A mta-sts.none.test');
  });
});
