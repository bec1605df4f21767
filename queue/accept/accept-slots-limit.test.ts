import { describe, expect, it } from 'vitest';
import { LatencyLimit } from './accept-slots-limit.js';

/** A limit on a clock the test moves. */
function limit(floor = 2, tolerance = 2, ceiling = 24) {
  const clock = { t: 1_000_000 };
  return { l: new LatencyLimit({ floor, tolerance }, ceiling, () => clock.t), clock };
}

describe('the unknown scans limit', () => {
  it('starts at the floor and grows by one for each quick scan that ends while unknown ones are held', () => {
    const { l, clock } = limit();
    expect(l.value).toBe(2);
    l.scanned(clock.t, 10, true);
    expect(l.value).toBe(3);
    l.scanned(clock.t, 12, true);
    l.scanned(clock.t, 20, true); // 2 × the quickest (10): still within
    expect(l.value).toBe(5);
    // Nobody held back: the limit is not what bounds them, so it does not grow.
    l.scanned(clock.t, 10, false);
    expect(l.value).toBe(5);
  });

  it('a scan past the tolerance cuts the limit in proportion, by half at most, once per round', () => {
    const { l, clock } = limit(2, 2, 100);
    for (let i = 0; i < 18; i++) l.scanned(clock.t, 10, true);
    expect(l.value).toBe(20);
    const roundStart = clock.t;
    clock.t += 30;
    l.scanned(roundStart, 25, false); // allowed 20: × 0.8
    expect(l.value).toBe(16);
    // Scans that started before that cut were in the same queue: they cut no further.
    l.scanned(roundStart, 200, false);
    expect(l.value).toBe(16);
    clock.t += 30;
    l.scanned(clock.t - 10, 400, false); // allowed 20 of 400: halved, not cut to a twentieth
    expect(l.value).toBe(8);
  });

  it('never goes below the floor nor above the ceiling', () => {
    const { l, clock } = limit(3, 2, 5);
    l.scanned(clock.t, 10, false);
    for (let i = 0; i < 10; i++) {
      clock.t += 100;
      l.scanned(clock.t - 1, 1000, false);
    }
    expect(l.value).toBe(3);
    for (let i = 0; i < 10; i++) l.scanned(clock.t, 10, true);
    expect(l.value).toBe(5);
  });

  it('tolerance 0 leaves only the ceiling', () => {
    const { l, clock } = limit(2, 0, 24);
    expect(l.value).toBe(24);
    l.scanned(clock.t, 10, false);
    l.scanned(clock.t, 10_000, false);
    expect(l.value).toBe(24);
  });

  it('the engines\' speed is the lower median of each five seconds\' quickest scan over the last minute', () => {
    const { l, clock } = limit();
    expect(l.quickest).toBeNull();
    l.scanned(clock.t, 0, false); // the clock's grain: counted as 1 ms
    expect(l.quickest).toBe(1);
    clock.t += 5_000;
    l.scanned(clock.t, 40, false);
    clock.t += 5_000;
    l.scanned(clock.t, 30, false);
    // One odd quick scan does not set the speed once others are seen: 1, 30, 40 → 30.
    expect(l.quickest).toBe(30);
    clock.t += 60_000;
    l.scanned(clock.t, 50, false);
    expect(l.quickest).toBe(50);
  });

  it('a reloaded config moves the limit into its new bounds', () => {
    const { l, clock } = limit(2, 2, 24);
    for (let i = 0; i < 10; i++) l.scanned(clock.t, 10, true);
    expect(l.value).toBe(12);
    l.update({ floor: 2, tolerance: 2 }, 6);
    expect(l.value).toBe(6);
    l.update({ floor: 8, tolerance: 2 }, 24);
    expect(l.value).toBe(8);
  });
});
