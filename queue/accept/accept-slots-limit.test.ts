import { describe, expect, it } from 'vitest';
import { LatencyLimit, sizeClass } from './accept-slots-limit.js';

/** A limit on a clock the test moves; `scan` ends a 2 KB scan that started `ago` ms before now. */
function limit(floor = 2, tolerance = 2, ceiling = 24) {
  const clock = { t: 1_000_000 };
  const l = new LatencyLimit({ floor, tolerance }, ceiling, () => clock.t);
  const scan = (ms: number, { held = false, inFlight = 0, bytes = 2048, start = clock.t - ms } = {}) => l.scanned({ start, ms, bytes, held, inFlight });
  return { l, clock, scan };
}

describe('the unknown scans limit', () => {
  it('starts at the floor and grows by one for each quick scan that ends while the limit holds unknown ones back', () => {
    const { l, scan } = limit();
    expect(l.value).toBe(2);
    scan(10, { held: true }); // the first scan of its size only teaches its speed
    expect(l.value).toBe(2);
    scan(10, { held: true });
    expect(l.value).toBe(3);
    scan(12, { held: true });
    scan(20, { held: true }); // 2 × the quickest (10): still within
    expect(l.value).toBe(5);
    // Nobody held back by the limit: it is not what bounds them, so it does not grow.
    scan(10);
    expect(l.value).toBe(5);
  });

  it('a scan past the tolerance cuts the limit in proportion, by half at most, once per round', () => {
    const { l, clock, scan } = limit(2, 2, 100);
    for (let i = 0; i < 19; i++) scan(10, { held: true });
    expect(l.value).toBe(20);
    clock.t += 30;
    scan(25, { inFlight: 2 }); // allowed 20: × 0.8; two others were in flight at the cut
    expect(l.value).toBe(16);
    const cut = clock.t;
    // Those two, and any scan that started before both ended, queued behind the same backlog.
    clock.t += 10;
    scan(200, { start: cut - 100 });
    clock.t += 10;
    scan(200, { start: cut + 5 });
    expect(l.value).toBe(16);
    scan(200, { start: cut - 50 }); // the last of the round
    const roundEnd = clock.t;
    scan(200, { start: roundEnd - 1 });
    expect(l.value).toBe(16);
    clock.t += 30;
    scan(400, { start: roundEnd }); // a new round: allowed 20 of 400, halved, not cut to a twentieth
    expect(l.value).toBe(8);
  });

  it('a slot given back without a scan ends its part of the round and teaches nothing', () => {
    const { l, clock, scan } = limit(2, 2, 100);
    for (let i = 0; i < 9; i++) scan(10, { held: true });
    expect(l.value).toBe(10);
    clock.t += 30;
    scan(40, { inFlight: 1 });
    expect(l.value).toBe(5);
    const cut = clock.t;
    clock.t += 5;
    l.unscanned(cut - 20);
    clock.t += 5;
    scan(40, { start: clock.t - 1 });
    expect(l.value).toBe(2); // 5 × 0.5, at the floor
    expect(l.quickest).toBe(10);
  });

  it('judges a scan against the speed of its own size: a large message is no sign of a queue', () => {
    const { l, scan } = limit(2, 2, 24);
    expect([sizeClass(2048), sizeClass(16 * 1024), sizeClass(16 * 1024 + 1), sizeClass(1 << 20), sizeClass(1 << 30)]).toEqual([0, 0, 1, 6, 10]);
    scan(10, { held: true });
    scan(10, { held: true });
    expect(l.value).toBe(3);
    // The first 1 MB message takes 300 ms: nothing known of that size yet, so nothing is cut.
    scan(300, { bytes: 1 << 20 });
    expect(l.value).toBe(3);
    scan(450, { bytes: 900_000, held: true }); // within 2 × its class's 300
    expect(l.value).toBe(4);
    scan(50); // a 2 KB one at 5 × its speed: cut
    expect(l.value).toBe(2);
  });

  it('never goes below the floor nor above the ceiling', () => {
    const { l, clock, scan } = limit(3, 2, 5);
    scan(10);
    for (let i = 0; i < 10; i++) {
      clock.t += 100;
      scan(1000);
    }
    expect(l.value).toBe(3);
    for (let i = 0; i < 10; i++) scan(10, { held: true });
    expect(l.value).toBe(5);
  });

  it('tolerance 0 leaves only the ceiling', () => {
    const { l, scan } = limit(2, 0, 24);
    expect(l.value).toBe(24);
    scan(10);
    scan(10_000);
    expect(l.value).toBe(24);
  });

  it('the engines\' speed is the lower median of each five seconds\' quickest scan over the last minute', () => {
    const { l, clock, scan } = limit();
    expect(l.quickest).toBeNull();
    scan(0); // the clock's grain: counted as 1 ms
    expect(l.quickest).toBe(1);
    clock.t += 5_000;
    scan(40);
    clock.t += 5_000;
    scan(30);
    // One odd quick scan does not set the speed once others are seen: 1, 30, 40 → 30.
    expect(l.quickest).toBe(30);
    clock.t += 60_000;
    expect(l.quickest).toBeNull();
    scan(50);
    expect(l.quickest).toBe(50);
  });

  it('a reloaded config moves the limit into its new bounds', () => {
    const { l, scan } = limit(2, 2, 24);
    for (let i = 0; i < 11; i++) scan(10, { held: true });
    expect(l.value).toBe(12);
    l.update({ floor: 2, tolerance: 2 }, 6);
    expect(l.value).toBe(6);
    l.update({ floor: 8, tolerance: 2 }, 24);
    expect(l.value).toBe(8);
  });
});
