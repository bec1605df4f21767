// Per-client keys and counts: an IPv6 client is one client per /64, so picking new addresses from
// its prefix does not buy more connections; expired entries are swept without being touched again.
import { describe, expect, it } from 'vitest';
import { Anvil, RecentEvents, SWEEP_EVERY, clientKey } from './ingress-anvil.js';
import { parseConfig } from '../mta-config.js';

const limits = (client: Record<string, unknown>) => parseConfig({ limits: { client } }).limits.client;

describe('clientKey', () => {
  it('keys IPv4 (mapped or not) by the whole address and IPv6 by its prefix', () => {
    expect(clientKey('192.0.2.7')).toBe('192.0.2.7');
    expect(clientKey('::ffff:192.0.2.7')).toBe('192.0.2.7');
    expect(clientKey('::FFFF:192.0.2.7')).toBe('192.0.2.7');
    expect(clientKey('2001:db8:1:2:aaaa::1')).toBe('2001:db8:1:2:0:0:0:0/64');
    expect(clientKey('2001:DB8:1:2:ffff:ffff:ffff:ffff')).toBe('2001:db8:1:2:0:0:0:0/64');
    expect(clientKey('2001:db8:1:3::1')).toBe('2001:db8:1:3:0:0:0:0/64');
    expect(clientKey('fe80::1%eth0')).toBe('fe80:0:0:0:0:0:0:0/64');
    expect(clientKey('::1')).toBe('0:0:0:0:0:0:0:0/64');
    expect(clientKey('2001:db8:1:2:aaaa::1', 128)).toBe('2001:db8:1:2:aaaa:0:0:1/128');
    expect(clientKey('2001:db8:1:2ff::1', 56)).toBe('2001:db8:1:200:0:0:0:0/56');
    expect(clientKey('2001:db8:1:2::1', 48)).toBe(clientKey('2001:db8:1:ffff::9', 48));
    expect(clientKey('64:ff9b::192.0.2.1', 128)).toBe('64:ff9b:0:0:0:0:c000:201/128');
  });

  it('keys IPv4 by a network when asked for fewer than 32 bits', () => {
    expect(clientKey('192.0.2.7', 64, 24)).toBe('192.0.2.0/24');
    expect(clientKey('::ffff:192.0.2.200', 64, 24)).toBe('192.0.2.0/24');
    expect(clientKey('198.51.100.130', 64, 25)).toBe('198.51.100.128/25');
    expect(clientKey('10.1.2.3', 64, 8)).toBe('10.0.0.0/8');
    expect(clientKey('192.0.2.7', 64, 32)).toBe('192.0.2.7');
    expect(clientKey('2001:db8:1:2::1', 64, 24)).toBe('2001:db8:1:2:0:0:0:0/64');
  });
});

describe('Anvil', () => {
  it('counts the addresses of one IPv6 /64 as one client, other prefixes apart', () => {
    const anvil = new Anvil();
    const l = limits({ maxConnections: 3 });
    const keys = ['2001:db8:5:6::1', '2001:db8:5:6::2', '2001:db8:5:6:1234::9', '2001:db8:5:6:ffff::77'].map((a) => clientKey(a, l.ipv6Prefix));
    expect(keys.slice(0, 3).map((k) => anvil.connect(k, l))).toEqual([null, null, null]);
    expect(anvil.connect(keys[3], l)?.enhanced).toBe('4.7.0');
    expect(anvil.connect(clientKey('2001:db8:5:7::1', l.ipv6Prefix), l)).toBeNull();
    anvil.disconnect(keys[1]);
    expect(anvil.connect(keys[3], l)).toBeNull();
  });

  it('applies the connection and message rates to the prefix too', () => {
    const anvil = new Anvil();
    const l = limits({ connectionRate: 2, messageRate: 2, maxConnections: 0 });
    const key = (i: number) => clientKey(`2001:db8::${i.toString(16)}`, l.ipv6Prefix);
    expect(anvil.connect(key(1), l, 0)).toBeNull();
    expect(anvil.connect(key(2), l, 1)).toBeNull();
    expect(anvil.connect(key(3), l, 2)?.enhanced).toBe('4.7.0');
    expect(anvil.mail(key(4), l, 3)).toBeNull();
    expect(anvil.mail(key(5), l, 4)).toBeNull();
    expect(anvil.mail(key(6), l, 5)?.enhanced).toBe('4.7.1');
  });
});

describe('RecentEvents', () => {
  it('sweeps keys whose events left the window, without their being touched again', () => {
    const events = new RecentEvents();
    for (let i = 0; i < 1000; i++) events.add(`k${i}`, 60_000, 1000 + i);
    expect(events.size).toBe(1000);
    // Another key's event a sweep interval after the last one: every old key is gone.
    events.add('late', 60_000, 2000 + SWEEP_EVERY);
    expect(events.size).toBe(1);
    expect(events.count('late', 60_000, 2001 + SWEEP_EVERY)).toBe(1);
  });

  it('keeps keys with an event still in the window', () => {
    const events = new RecentEvents();
    events.add('old', 10 * 60_000, 0);
    events.add('other', 10 * 60_000, SWEEP_EVERY + 1);
    expect(events.size).toBe(2);
    expect(events.count('old', 10 * 60_000, SWEEP_EVERY + 2)).toBe(1);
  });
});
