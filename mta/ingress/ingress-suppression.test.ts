import pino from 'pino';
import { describe, expect, it } from 'vitest';
import { REPLIES, reply } from '../../base/base-reply.js';
import { ConfigError, parseConfig } from '../mta-config.js';
import { suppressionRule } from '../../queue/queue-suppression-config.js';
import { Policy } from './ingress-policy.js';
import { suppressedAtRcpt, suppressedLive } from './ingress-suppression.js';

const config = parseConfig({
  trustedNetworks: ['10.0.0.0/8'],
  tenants: { shop: { domains: ['shop.test'], networks: ['192.0.2.0/24'] }, news: { suppression: { action: 'bounce', expire: '30d' } } },
  suppression: { classes: ['bad-mailbox'], expire: '10d' },
});
const policy = new Policy(config);
const log = pino({ level: 'silent' });
const refused = reply(550, '5.1.1', '<gone@dst.test>: recipient suppressed after a hard bounce on 2027-01-15 (bad-mailbox)');

function queue(answer: () => ReturnType<typeof reply> | null) {
  const asked: string[] = [];
  return { asked, q: { suppressions: { refusal: (tenant: string, address: string, _now?: number, always = false) => { asked.push(`${tenant}/${address}${always ? ' always' : ''}`); return answer(); } } } as never };
}

describe('the suppression list at RCPT', () => {
  const rcpt = { tenant: 'shop', address: 'gone@dst.test' };
  it.each([
    ['an authenticated user', { address: '203.0.113.9', authUser: 'u', role: 'submission' as const }],
    ['a tenant network', { address: '192.0.2.7', authUser: null, role: 'mx' as const }],
    ['a trusted network', { address: '10.1.2.3', authUser: null, role: 'mx' as const }],
  ])('asks for the recipient\'s own tenant when the mail comes from %s', (_name, client) => {
    const { asked, q } = queue(() => refused);
    expect(suppressedAtRcpt(q, policy, rcpt, client, log)).toBe(refused);
    expect(asked).toEqual(['shop/gone@dst.test']);
  });

  it('leaves mail from elsewhere to the queue (not the tenant\'s outbound mail)', () => {
    const { asked, q } = queue(() => refused);
    expect(suppressedAtRcpt(q, policy, rcpt, { address: '203.0.113.9', authUser: null, role: 'mx' }, log)).toBeNull();
    expect(asked).toEqual([]);
  });

  it('answers 451 4.3.0 when the list cannot be read', () => {
    const { q } = queue(() => { throw new Error('SQLITE_IOERR'); });
    expect(suppressedAtRcpt(q, policy, rcpt, { address: '192.0.2.7', authUser: null, role: 'mx' }, log)).toBe(REPLIES.localError);
    expect(suppressedLive(q, rcpt, '192.0.2.7', log)).toBe(REPLIES.localError);
  });

  it('asks for the proxy whatever the tenant\'s action (a live relay bounces nothing later)', () => {
    const { asked, q } = queue(() => refused);
    expect(suppressedLive(q, rcpt, '192.0.2.7', log)).toBe(refused);
    expect(asked).toEqual(['shop/gone@dst.test always']);
  });
});

describe('suppression settings', () => {
  it('gives each tenant its own keys over the global ones', () => {
    expect(suppressionRule(config, 'shop')).toEqual({ classes: ['bad-mailbox'], expire: 10 * 86_400_000, action: 'refuse' });
    expect(suppressionRule(config, 'news')).toEqual({ classes: ['bad-mailbox'], expire: 30 * 86_400_000, action: 'bounce' });
    expect(suppressionRule(parseConfig({}), 'any')).toEqual({ classes: ['bad-mailbox', 'bad-domain'], expire: 90 * 86_400_000, action: 'refuse' });
  });

  it('names the key of every mistake', () => {
    let problems: string[] = [];
    try {
      parseConfig({
        suppression: { classes: ['bad-mailbox', 'grumpy'], expire: 'soon', action: 'drop', extra: 1 },
        tenants: { shop: { suppression: { classes: 'bad-mailbox', expire: -1, action: 'ignore', bogus: true } } },
      });
    } catch (err) {
      if (!(err instanceof ConfigError)) throw err;
      problems = err.problems;
    }
    const keys = problems.map((p) => p.split(':')[0]);
    expect(keys).toEqual(expect.arrayContaining([
      'suppression.classes[1]', 'suppression.expire', 'suppression.action', 'suppression.extra',
      'tenants.shop.suppression.classes', 'tenants.shop.suppression.expire', 'tenants.shop.suppression.action', 'tenants.shop.suppression.bogus',
    ]));
  });
});
