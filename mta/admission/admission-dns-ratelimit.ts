/*
 * Response rate limiting for the DNS responder's UDP answers, so it cannot be used to reflect
 * traffic at a forged source address (the idea of BIND's RRL, reduced to one bucket per network).
 *
 * Takes: each UDP answer's destination (the asking address) and the clock (injectable).
 * Gives: `take(address)`: 'send' while that network (IPv4 /24, IPv6 /56) is within RATE answers a
 * second (bursts up to BURST), then alternately 'slip' (send an empty truncated answer, so a real
 * resolver asks again over TCP, which a forged source cannot) and 'drop'. TCP is never limited.
 * Memory: one bucket per network seen within the last few seconds, at most MAX_NETWORKS (the
 * oldest go first).
 */
import { isIP } from 'node:net';
import { clientKey } from '../ingress/ingress-anvil.js';

/** Answers a second per network, and the burst allowed above it. */
export const RATE = 100;
export const BURST = 200;
export const MAX_NETWORKS = 10_000;

interface Bucket { tokens: number; at: number; slip: boolean }

export class UdpRateLimit {
  readonly #buckets = new Map<string, Bucket>();

  constructor(private readonly now: () => number = Date.now) {}

  take(address: string): 'send' | 'slip' | 'drop' {
    const key = isIP(address) === 6 ? clientKey(address, 56) : clientKey(address, 64, 24);
    const now = this.now();
    const bucket = this.#buckets.get(key) ?? { tokens: BURST, at: now, slip: false };
    bucket.tokens = Math.min(BURST, bucket.tokens + ((now - bucket.at) / 1000) * RATE);
    bucket.at = now;
    this.#buckets.delete(key);
    this.#buckets.set(key, bucket);
    if (this.#buckets.size > MAX_NETWORKS) this.#buckets.delete(this.#buckets.keys().next().value as string);
    if (bucket.tokens >= 1) {
      bucket.tokens -= 1;
      return 'send';
    }
    bucket.slip = !bucket.slip;
    return bucket.slip ? 'slip' : 'drop';
  }
}
