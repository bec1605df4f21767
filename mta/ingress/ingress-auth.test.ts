// AUTH penalties as data, with a fake password check and an injected clock: the penalty belongs to
// the address and the account (a new connection does not reset it), IPv6 addresses count by their
// prefix, blocks outlive a flood of other names, and ended entries are swept.
import { describe, expect, it } from 'vitest';
import { SWEEP_EVERY } from './ingress-anvil.js';
import { AuthGuard, Expiring, type AuthAttempt } from './ingress-auth.js';
import type { PasswordVerifier } from './ingress-auth-hash.js';
import { parseConfig } from '../mta-config.js';

const RIGHT = 'right';
const verifier = { verify: (password: string) => Promise.resolve(password === RIGHT) } as unknown as PasswordVerifier;

function setup(auth: Record<string, unknown>) {
  let now = 1_000_000;
  const guard = new AuthGuard(verifier, () => now);
  const config = parseConfig({ tenants: { alpha: { domains: ['alpha.test'] } }, users: [{ name: 'ann@alpha.test', password: '$2b$10$TEDCb/Iks/50BtWEkXbvJ.RjnH8OjvAEP5opDiqXfo1cmxivF9mz2', tenant: 'alpha' }], auth });
  const attempt = (a: Partial<AuthAttempt>) => guard.authenticate({ username: 'ann@alpha.test', password: 'wrong', address: '192.0.2.1', sessionFailures: 0, exempt: false, ...a }, config);
  return { attempt, advance: (ms: number) => { now += ms; } };
}

describe('AuthGuard', () => {
  it('makes the next attempt wait out the last failure’s delay, on a new connection too', async () => {
    const { attempt, advance } = setup({ failureDelay: '1s', maxDelay: '8s', maxFailures: 100 });
    expect(await attempt({})).toMatchObject({ ok: false, why: 'invalid', delayMs: 1000 });
    // The client hung up at once and came back 100 ms later with the right password (sessionFailures 0).
    advance(100);
    expect(await attempt({ password: RIGHT })).toMatchObject({ ok: true, delayMs: 900 });
    // Another address, the same account: the account's penalty holds too.
    expect(await attempt({ address: '192.0.2.99' })).toMatchObject({ ok: false, delayMs: 900 + 1000 });
    // The same address, another account: the address's penalty holds (its second failure: 2 s more).
    expect(await attempt({ username: 'bob@alpha.test' })).toMatchObject({ ok: false, delayMs: 900 + 2000 });
  });

  it('counts the addresses of one IPv6 /64 as one address', async () => {
    const { attempt } = setup({ failureDelay: 0, maxDelay: 0, maxFailures: 3 });
    for (const [i, name] of ['a', 'b', 'c'].entries()) {
      expect((await attempt({ username: `${name}@alpha.test`, address: `2001:db8:7:7::${i + 1}` })).ok).toBe(false);
    }
    expect(await attempt({ password: RIGHT, address: '2001:db8:7:7:abcd::5' })).toMatchObject({ ok: false, why: 'blocked' });
    expect(await attempt({ password: RIGHT, address: '2001:db8:7:8::1' })).toMatchObject({ ok: true });
  });

  it('keeps a block however many other names are blocked after it', async () => {
    const { attempt } = setup({ failureDelay: 0, maxDelay: 0, maxFailures: 1, block: '10m' });
    expect((await attempt({ exempt: true })).ok).toBe(false);
    for (let i = 0; i < 100_050; i++) await attempt({ username: `n${i}@alpha.test`, exempt: true });
    expect(await attempt({ password: RIGHT, exempt: true })).toMatchObject({ ok: false, why: 'blocked' });
  }, 60_000);
});

describe('Expiring', () => {
  it('sweeps ended marks a minute on, without their being touched again', () => {
    const marks = new Expiring();
    for (let i = 0; i < 1000; i++) marks.mark(`k${i}`, 5000 + i, 0);
    marks.mark('long', 10 * SWEEP_EVERY, 0);
    expect(marks.size).toBe(1001);
    expect(marks.until('other', SWEEP_EVERY)).toBe(0);
    expect(marks.size).toBe(1);
    expect(marks.until('long', SWEEP_EVERY)).toBe(10 * SWEEP_EVERY);
  });

  it('never ends a mark early, and keeps the later of two', () => {
    const marks = new Expiring();
    marks.mark('k', 500, 0);
    marks.mark('k', 300, 0);
    expect(marks.until('k', 499)).toBe(500);
    expect(marks.until('k', 500)).toBe(0);
  });
});
