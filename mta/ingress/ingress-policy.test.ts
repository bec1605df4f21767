import { describe, expect, it } from 'vitest';
import { parseConfig } from '../mta-config.js';
import { Policy, RELAY_TENANT } from './ingress-policy.js';

const policy = new Policy(parseConfig({
  trustedNetworks: ['10.1.0.0/16'],
  tenants: {
    alpha: { domains: ['alpha.test', 'xn--bcher-kva.test'] },
    beta: { domains: ['beta.test'], networks: ['192.0.2.0/24', '2001:db8::/32'] },
  },
  users: [{ name: 'ann', password: '$2b$10$' + 'a'.repeat(53), tenant: 'alpha' }],
}));

const anon = { address: '203.0.113.5', authUser: null, role: 'mx' as const };

describe('relay policy and tenants', () => {
  it.each([
    // address, client, expected tenant or refusal
    ['u@alpha.test', anon, 'alpha'],
    ['u@ALPHA.TEST', anon, 'alpha'],
    ['u@bücher.test', anon, 'alpha'],
    ['u@beta.test', anon, 'beta'],
    ['u@other.test', anon, '550 5.7.1'],
    ['u%other.test@alpha.test', anon, '550 5.7.1'],
    ['other.test!u@alpha.test', anon, '550 5.7.1'],
    ['u@[192.0.2.1]', anon, '550 5.7.1'],
    ['u@other.test', { ...anon, authUser: 'ann' }, 'alpha'],
    ['u@beta.test', { ...anon, authUser: 'ann' }, 'alpha'],
    ['u@other.test', { ...anon, address: '192.0.2.44' }, 'beta'],
    ['u@other.test', { ...anon, address: '::ffff:192.0.2.44' }, 'beta'],
    ['u@other.test', { ...anon, address: '2001:db8::25' }, 'beta'],
    ['u@other.test', { ...anon, address: '10.1.2.3' }, RELAY_TENANT],
    ['u@alpha.test', { ...anon, address: '10.1.2.3' }, 'alpha'],
    ['u%x@other.test', { ...anon, address: '10.1.2.3' }, RELAY_TENANT],
  ])('%s from %j → %s', (address, client, expected) => {
    const d = policy.checkRecipient(address, client);
    if (d.ok) expect(d.tenant).toBe(expected);
    else expect(`${d.reply.code} ${d.reply.enhanced}`).toBe(expected);
  });

  it('accepts the bare <postmaster> from anyone, as the configured postmaster', () => {
    expect(policy.checkRecipient('Postmaster', anon)).toEqual({ ok: true, tenant: RELAY_TENANT, domain: 'localhost', address: 'postmaster@localhost' });
    const p2 = new Policy(parseConfig({ postmaster: 'hostmaster@alpha.test', tenants: { alpha: { domains: ['alpha.test'] } } }));
    expect(p2.checkRecipient('postmaster', anon)).toEqual({ ok: true, tenant: 'alpha', domain: 'alpha.test', address: 'hostmaster@alpha.test' });
  });

  it('normalises the recipient domain it stores', () => {
    const d = policy.checkRecipient('User@Bücher.TEST.', anon);
    expect(d).toEqual({ ok: true, tenant: 'alpha', domain: 'xn--bcher-kva.test', address: 'User@xn--bcher-kva.test' });
  });

  it('requires AUTH on submission unless the client network is trusted', () => {
    expect(policy.checkSender({ ...anon, role: 'submission' })?.code).toBe(530);
    expect(policy.checkSender({ ...anon, role: 'submission', authUser: 'ann' })).toBeNull();
    expect(policy.checkSender({ ...anon, role: 'submission', address: '10.1.9.9' })).toBeNull();
    expect(policy.checkSender(anon)).toBeNull();
  });
});
