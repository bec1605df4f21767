import { describe, expect, it } from 'vitest';
import { LatencyWindow } from './base-latency-window.js';

describe('LatencyWindow', () => {
  it('gives nearest-rank percentiles over the samples that ended within the window', () => {
    let now = 0;
    const w = new LatencyWindow(16, () => now);
    expect(w.percentile(99, 1000)).toBeNull();
    for (let i = 1; i <= 10; i++) w.record(i * 10);
    expect(w.percentile(50, 1000)).toBe(50);
    expect(w.percentile(90, 1000)).toBe(90);
    expect(w.percentile(99, 1000)).toBe(100);
    now = 500;
    w.record(1);
    now = 1200;
    // Only the sample recorded at 500 is within the last second.
    expect(w.percentile(99, 1000)).toBe(1);
    now = 1600;
    expect(w.percentile(99, 1000)).toBeNull();
  });

  it('keeps the newest samples when more arrive than it holds, without growing', () => {
    const w = new LatencyWindow(4, () => 0);
    for (const ms of [1000, 1000, 1000, 1000, 1, 2, 3, 4]) w.record(ms);
    expect(w.percentile(99, 10)).toBe(4);
    expect(w.percentile(50, 10)).toBe(2);
  });

  it('times operations, failed ones too, and counts a running one by its age', async () => {
    let now = 0;
    const w = new LatencyWindow(8, () => now);
    const seen: number[] = [];
    w.onSample = (ms) => seen.push(ms);
    let finish!: () => void;
    const running = w.time(() => new Promise<void>((r) => { finish = r; }));
    now = 700;
    expect(w.oldestRunningMs()).toBe(700);
    expect(w.percentile(99, 1000)).toBeNull();
    expect(w.worst(99, 1000)).toBe(700);
    finish();
    await running;
    expect(w.oldestRunningMs()).toBeNull();
    await expect(w.time(async () => { now = 750; throw new Error('EIO'); })).rejects.toThrow('EIO');
    expect(seen).toEqual([700, 50]);
    expect(w.worst(99, 1000)).toBe(700);
  });
});
