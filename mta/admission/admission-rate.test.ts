import { describe, expect, it } from 'vitest';
import { LEARN_AFTER, MIN_NORMAL, NormalRate, WINDOW } from './admission-rate.js';

/** A clock the test moves, and a rate fed `perSecond` queries each second for `seconds`. */
function world(learnAfterMs?: number) {
  let now = 1_000_000_000;
  const rate = new NormalRate(() => now, learnAfterMs);
  const run = (seconds: number, perSecond: number) => {
    for (let s = 0; s < seconds; s++) {
      for (let i = 0; i < perSecond; i++) rate.hit();
      now += 1000;
    }
  };
  return { rate, run, wait: (ms: number) => { now += ms; } };
}

describe('a rate against its normal level', () => {
  it('gives no ratio until enough history exists', () => {
    const { rate, run } = world();
    run(LEARN_AFTER - 1, 2);
    expect(rate.ratio()).toBeNull();
    run(1, 2);
    expect(rate.ratio()).not.toBeNull();
  });

  it('learns the normal rate and sees a surge as a multiple of it', () => {
    const { rate, run } = world();
    run(1800, 2);
    expect(rate.normal()).toBeGreaterThan(1.8);
    // The window holds the current second too, which has only begun.
    expect(rate.ratio()).toBeGreaterThan(0.85);
    expect(rate.ratio()).toBeLessThan(1.15);
    run(WINDOW, 20);
    expect(rate.ratio()).toBeGreaterThan(8);
  });

  it('does not take a surge for normal within minutes', () => {
    const { rate, run } = world();
    run(1800, 2);
    run(300, 20);
    expect(rate.normal()).toBeLessThan(4);
    expect(rate.ratio()).toBeGreaterThan(5);
  });

  it('returns to normal when the surge ends', () => {
    const { rate, run } = world();
    run(1800, 2);
    run(60, 20);
    run(WINDOW, 2);
    expect(rate.ratio()).toBeLessThan(1.5);
  });

  it('floors the normal rate, so a few queries on a quiet domain are no surge', () => {
    const { rate, run, wait } = world();
    run(LEARN_AFTER, 0);
    expect(rate.normal()).toBe(MIN_NORMAL);
    run(1, 2);
    expect(rate.ratio()).toBeLessThan(3);
    // A long quiet spell (hours without a query) decays the normal rate without counting each second.
    wait(6 * 3600_000);
    expect(rate.current()).toBe(0);
    expect(rate.normal()).toBe(MIN_NORMAL);
  });

  it('learns for as long as it is told before giving a ratio', () => {
    const { rate, run } = world(15_000);
    run(14, 20);
    expect(rate.ratio()).toBeNull();
    run(1, 20);
    expect(rate.normal()).toBeCloseTo(20, 0);
    run(WINDOW, 400);
    expect(rate.ratio()).toBeGreaterThan(15);
    // Learned this briefly, the surge still counts as one: the normal rate moves ten times slower meanwhile.
    run(40, 400);
    expect(rate.ratio()).toBeGreaterThan(6);
  });

  it('gives the rate since it was last asked against the normal one, floored, and starts the next span', () => {
    let now = 1_000_000_000;
    const rate = new NormalRate(() => now, 10_000);
    for (let s = 0; s < 10; s++) { rate.hit(5); now += 1000; }
    expect(rate.recentRatio()).toBeGreaterThan(0); // the learning span itself
    expect(rate.normal()).toBeCloseTo(5, 0);
    // A tenth of a second: 3 connections are no surge (the normal rate taken as 20 a second), 100 are.
    rate.hit(3); now += 100;
    expect(rate.recentRatio()).toBeCloseTo(30 / 20, 1);
    rate.hit(100); now += 100;
    expect(rate.recentRatio()).toBeCloseTo(1000 / 20, 0);
    now += 100;
    expect(rate.recentRatio()).toBe(0);
    expect(new NormalRate(() => now).recentRatio()).toBeNull();
  });
});
