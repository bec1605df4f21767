import { describe, expect, it } from 'vitest';
import { BURST, RATE, UdpRateLimit } from './admission-dns-ratelimit.js';

describe('UDP response rate limit', () => {
  it('sends up to the burst, then slips and drops alternately, and refills at RATE a second', () => {
    let now = 1_000_000;
    const limit = new UdpRateLimit(() => now);
    for (let i = 0; i < BURST; i++) expect(limit.take('192.0.2.7')).toBe('send');
    expect([limit.take('192.0.2.8'), limit.take('192.0.2.9'), limit.take('192.0.2.7'), limit.take('192.0.2.7')]).toEqual(['slip', 'drop', 'slip', 'drop']);
    // Another network has its own bucket; IPv6 clients are counted by their /56.
    expect(limit.take('198.51.100.7')).toBe('send');
    for (let i = 0; i < BURST; i++) limit.take(`2001:db8:0:${(i % 256).toString(16)}::1`);
    expect(limit.take('2001:db8:0:ff::2')).toBe('slip');
    expect(limit.take('2001:db8:1::1')).toBe('send');
    now += 1000;
    for (let i = 0; i < RATE; i++) expect(limit.take('192.0.2.7')).toBe('send');
    expect(limit.take('192.0.2.7')).not.toBe('send');
  });
});
