import { describe, expect, it } from 'vitest';
import { SeenWindow } from './queue-egress-seen.js';

const seen = (at: number, tenant = 't') => ({ at, tenant, throttled: false });

describe('SeenWindow', () => {
  it('keeps what is within the window, oldest first', () => {
    const w = new SeenWindow(100);
    for (let at = 0; at < 10; at++) w.add(seen(at), at - 3);
    expect([...w].map((s) => s.at)).toEqual([6, 7, 8, 9]);
    expect(w.length).toBe(4);
    expect(w.lastAt).toBe(9);
  });

  it('keeps at most the newest `max`, across compactions', () => {
    const w = new SeenWindow(5000);
    for (let at = 0; at < 20_000; at++) w.add(seen(at), -1);
    expect(w.length).toBe(5000);
    const kept = [...w].map((s) => s.at);
    expect(kept[0]).toBe(15_000);
    expect(kept.at(-1)).toBe(19_999);
    expect(kept.every((at, i) => i === 0 || at === kept[i - 1] + 1)).toBe(true);
  });

  it('adds in constant time however long the window: 200,000 entries past a full 10,000 well under a second', () => {
    const w = new SeenWindow(10_000);
    const started = performance.now();
    for (let at = 0; at < 210_000; at++) w.add(seen(at), -1);
    // Taken one by one from the front of an array (splice), these took tens of seconds.
    expect(performance.now() - started).toBeLessThan(1000);
    expect(w.length).toBe(10_000);
  });

  it('is empty when everything is older than the window', () => {
    const w = new SeenWindow(10);
    w.add(seen(1), 0);
    w.add(seen(2), 5);
    expect(w.length).toBe(0);
    expect(w.lastAt).toBeUndefined();
    expect([...w]).toEqual([]);
  });
});
