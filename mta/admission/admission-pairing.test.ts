import { describe, expect, it } from 'vitest';
import { MAX_CANDIDATES, REPORT_AGAIN, ResolverPairing } from './admission-pairing.js';

function world(pairingAddresses: string[]) {
  let now = 1_000_000;
  const pairs: Array<[string, string]> = [];
  const pairing = new ResolverPairing({ pairingAddresses, pairingWindow: 30_000 }, { pairResolver: (r, c) => pairs.push([r, c]) }, () => now);
  return { pairing, pairs, wait: (ms: number) => { now += ms; } };
}

describe('resolver pairing by address', () => {
  it('hands each resolver its own address, stable while it keeps asking', () => {
    const { pairing } = world(['10.0.0.1', '10.0.0.2', 'fd00::1']);
    const a = pairing.addressFor('192.0.2.53', 4);
    const b = pairing.addressFor('198.51.100.53', 4);
    expect(new Set([a, b])).toEqual(new Set(['10.0.0.1', '10.0.0.2']));
    expect(pairing.addressFor('192.0.2.53', 4)).toBe(a);
    expect(pairing.addressFor('192.0.2.53', 6)).toBe('fd00::1');
    expect(world(['10.0.0.1']).pairing.addressFor('192.0.2.53', 6)).toBeNull();
  });

  it('pairs a connection on a resolver\'s address within the window, once', () => {
    const { pairing, pairs, wait } = world(['10.0.0.1', '10.0.0.2']);
    const a = pairing.addressFor('192.0.2.53', 4)!;
    wait(5_000);
    expect(pairing.connected(`::ffff:${a}`, '::ffff:203.0.113.7')).toBe('192.0.2.53');
    pairing.connected(a, '203.0.113.7');
    expect(pairs).toEqual([['192.0.2.53', '203.0.113.7']]);
    wait(REPORT_AGAIN);
    pairing.addressFor('192.0.2.53', 4);
    pairing.connected(a, '203.0.113.7');
    expect(pairs).toHaveLength(2);
  });

  it('pairs nobody after the window, on an address handed to nobody, or on one shared by two resolvers', () => {
    const { pairing, pairs, wait } = world(['10.0.0.1']);
    const a = pairing.addressFor('192.0.2.53', 4)!;
    wait(31_000);
    expect(pairing.connected(a, '203.0.113.7')).toBeNull();
    expect(pairing.connected('10.9.9.9', '203.0.113.7')).toBeNull();
    // More resolvers than addresses: the least recently used is reused, and while both are recent it pairs nobody.
    pairing.addressFor('192.0.2.53', 4);
    expect(pairing.addressFor('198.51.100.53', 4)).toBe(a);
    expect(pairing.connected(a, '203.0.113.7')).toBeNull();
    wait(31_000);
    pairing.addressFor('198.51.100.53', 4);
    expect(pairing.connected(a, '203.0.113.8')).toBe('198.51.100.53');
    expect(pairs).toEqual([['198.51.100.53', '203.0.113.8']]);
  });
});

describe('resolver pairing by timing', () => {
  it('pairs a client with the one resolver answered before it', () => {
    const { pairing, pairs, wait } = world([]);
    pairing.answered('192.0.2.53');
    wait(2_000);
    expect(pairing.connected('192.0.2.25', '203.0.113.7')).toBe('192.0.2.53');
    expect(pairs).toEqual([['192.0.2.53', '203.0.113.7']]);
    // Paired: its next connections are not used again (another resolver's answer just before is chance).
    pairing.answered('198.51.100.53');
    expect(pairing.connected('192.0.2.25', '203.0.113.7')).toBeNull();
    wait(REPORT_AGAIN);
    pairing.answered('198.51.100.53');
    expect(pairing.connected('192.0.2.25', '203.0.113.7')).toBe('198.51.100.53');
    expect(pairs).toHaveLength(2);
  });

  it('narrows several candidates down over the client\'s connections', () => {
    const { pairing, pairs, wait } = world([]);
    pairing.answered('192.0.2.53');
    pairing.answered('198.51.100.53');
    expect(pairing.connected('192.0.2.25', '203.0.113.7')).toBeNull();
    wait(40_000);
    pairing.answered('198.51.100.53');
    pairing.answered('203.0.113.53');
    expect(pairing.connected('192.0.2.25', '203.0.113.7')).toBe('198.51.100.53');
    expect(pairs).toEqual([['198.51.100.53', '203.0.113.7']]);
  });

  it('pairs nobody when no resolver was answered within the window, or too many were', () => {
    const { pairing, pairs, wait } = world([]);
    pairing.answered('192.0.2.53');
    wait(31_000);
    expect(pairing.connected('192.0.2.25', '203.0.113.7')).toBeNull();
    for (let i = 0; i <= MAX_CANDIDATES; i++) pairing.answered(`10.1.${i >> 8}.${i & 255}`);
    expect(pairing.connected('192.0.2.25', '203.0.113.7')).toBeNull();
    expect(pairs).toEqual([]);
  });
});
