import { describe, expect, it } from 'vitest';
import { Pairs } from './queue-pairs.js';

const SITE = 'mx:capped.test';
const LIMITS = { maxConnections: 20, initialConnections: 5 };

/** A pair in full use at its window (every allowed connection busy), as the scheduler keeps it. */
function busy(pairs: Pairs): void {
  const pair = pairs.get(SITE, null)!;
  pair.active = Math.floor(pair.window);
}

describe('pair windows under a learnt connection cap', () => {
  it('holds the window one below the count the destination refused, and never grows past it', () => {
    const pairs = new Pairs();
    pairs.take(SITE, LIMITS, null, 0);
    for (let i = 0; i < 200; i++) { busy(pairs); pairs.feedback(SITE, null, 'ok', 0); }
    expect(pairs.get(SITE, null)!.window).toBeGreaterThan(11);
    expect(pairs.cap(SITE, null, 11, 60_000, 1_000)).toBe(10);
    expect(pairs.get(SITE, null)!.window).toBe(10);
    // two refused together: the lower count holds
    expect(pairs.cap(SITE, null, 12, 60_000, 1_001)).toBe(10);
    for (let i = 0; i < 200; i++) { busy(pairs); pairs.feedback(SITE, null, 'ok', 30_000); }
    expect(pairs.get(SITE, null)!.window).toBe(10);
    expect(pairs.connections(SITE, null)).toBe(10);
  });

  it('tries one more connection after a quiet interval in full use, and drops back when that one is refused', () => {
    const pairs = new Pairs();
    pairs.take(SITE, LIMITS, null, 0);
    pairs.get(SITE, null)!.window = 10;
    pairs.cap(SITE, null, 11, 60_000, 0);
    busy(pairs);
    pairs.feedback(SITE, null, 'ok', 59_999);
    expect(pairs.connections(SITE, null)).toBe(10);
    busy(pairs);
    pairs.feedback(SITE, null, 'ok', 60_000);
    expect(pairs.connections(SITE, null)).toBe(11);
    for (let i = 0; i < 20; i++) { busy(pairs); pairs.feedback(SITE, null, 'ok', 60_001); }
    expect(pairs.get(SITE, null)!.window).toBe(11);
    // the 11th connection was refused: back to 10, and the next try waits another interval
    pairs.cap(SITE, null, 11, 60_000, 61_000);
    expect(pairs.connections(SITE, null)).toBe(10);
    expect(pairs.get(SITE, null)!.window).toBe(10);
    busy(pairs);
    pairs.feedback(SITE, null, 'ok', 100_000);
    expect(pairs.connections(SITE, null)).toBe(10);
  });

  it('forgets the cap once probing reaches the site\'s maximum; never holds below one connection', () => {
    const pairs = new Pairs();
    pairs.take(SITE, { maxConnections: 3, initialConnections: 3 }, null, 0);
    pairs.cap(SITE, null, 3, 1_000, 0);
    expect(pairs.connections(SITE, null)).toBe(2);
    busy(pairs);
    pairs.feedback(SITE, null, 'ok', 1_000);
    expect(pairs.connections(SITE, null)).toBeUndefined();
    pairs.cap(SITE, null, 2, 1_000, 2_000);
    pairs.cap(SITE, null, 1, 1_000, 2_001);
    expect(pairs.connections(SITE, null)).toBe(1);
    expect(pairs.get(SITE, null)!.window).toBe(1);
  });
});
