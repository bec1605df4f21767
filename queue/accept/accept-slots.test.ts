import { describe, expect, it } from 'vitest';
import { ScanSlots } from './accept-slots.js';

const tick = () => new Promise((r) => setImmediate(r));

describe('scan slots', () => {
  it('keeps the reserve for known senders: unknown ones wait once only the reserve is free', async () => {
    const slots = new ScanSlots(4, 0.25);
    expect(slots.reserved).toBe(1);
    const held = await Promise.all([slots.take('unknown'), slots.take('unknown'), slots.take('unknown')]);
    let fourth = false;
    const waiting = slots.take('unknown').then((r) => { fourth = true; return r; });
    await tick();
    expect(fourth).toBe(false);
    expect(slots.waiting).toEqual({ known: 0, unknown: 1 });
    // The reserved slot goes to a known sender at once.
    const known = await slots.take('known');
    expect(slots.inUse).toBe(4);
    known();
    await tick();
    expect(fourth).toBe(false);
    held[0]();
    (await waiting)();
    expect(fourth).toBe(true);
    held[1]();
    held[2]();
    expect(slots.inUse).toBe(0);
  });

  it('serves waiting known senders before unknown ones that came first', async () => {
    const slots = new ScanSlots(2, 0);
    const a = await slots.take('unknown');
    const b = await slots.take('unknown');
    const order: string[] = [];
    const u = slots.take('unknown').then((r) => { order.push('unknown'); return r; });
    const k = slots.take('known').then((r) => { order.push('known'); return r; });
    a();
    await tick();
    b();
    (await k)();
    (await u)();
    expect(order).toEqual(['known', 'unknown']);
  });

  it('a wait ends with the signal, and the abandoned place is not granted later', async () => {
    const slots = new ScanSlots(1, 0);
    const a = await slots.take('known');
    const ac = new AbortController();
    const w = slots.take('unknown', ac.signal);
    ac.abort(new Error('deadline'));
    await expect(w).rejects.toThrow('deadline');
    expect(slots.waiting.unknown).toBe(0);
    a();
    expect(slots.inUse).toBe(0);
  });

  it('a release given twice frees one slot, and the observer hears waits and scans', async () => {
    const seen: string[] = [];
    const slots = new ScanSlots(1, 0, { waited: (ms, p) => seen.push(`wait:${p}`), scanned: () => seen.push('scan') });
    const r = await slots.take('unknown');
    r();
    r();
    expect(slots.inUse).toBe(0);
    expect(seen).toEqual(['wait:unknown', 'scan']);
  });

  it('never reserves every slot: one is always open to unknown senders', () => {
    expect(new ScanSlots(1, 0.9).reserved).toBe(0);
    expect(new ScanSlots(10, 0.9).reserved).toBe(9);
  });

  it('holds unknown scans at the engines\' limit while known ones go on, lets more in as scans end quickly, and learns nothing from a slot given back unscanned', async () => {
    const clock = { t: 1_000_000 };
    const slots = new ScanSlots(32, 0.25, undefined, { floor: 2, tolerance: 4 }, () => clock.t);
    expect(slots.status().unknown).toEqual({ inUse: 0, limit: 2, quickestMs: null });
    // A first scan of this size teaches the engines' speed (10 ms).
    const first = await slots.take('unknown', undefined, 2048);
    clock.t += 10;
    first();
    const held = [await slots.take('unknown', undefined, 2048), await slots.take('unknown', undefined, 2048)];
    let waiting = 0;
    const waiters = Array.from({ length: 8 }, () => slots.take('unknown', undefined, 2048).then((r) => { waiting--; return r; }));
    waiting = 8;
    await tick();
    expect(waiting).toBe(8);
    // A known sender's message is not held by the unknown ones' limit.
    const known = await slots.take('known', undefined, 2048);
    expect(slots.inUse).toBe(3);
    // Each quick scan that ends while the limit holds the others back raises it by one, and the
    // waiters go in at once.
    clock.t += 10;
    held.shift()!();
    expect(slots.status().unknown).toEqual({ inUse: 3, limit: 3, quickestMs: 10 });
    const running = [held[0], ...await Promise.all(waiters.slice(0, 2))];
    for (const r of running.splice(0)) {
      clock.t += 10;
      r(); // 20–30 ms: within 4 × 10
    }
    expect(slots.status().unknown.limit).toBe(6);
    running.push(...await Promise.all(waiters.slice(2, 8)));
    expect(slots.status().unknown).toMatchObject({ inUse: 6, limit: 6 });
    // Given back without a scan (the message deferred): nothing learned, the limit as it was.
    running.pop()!(false);
    expect(slots.status().unknown).toEqual({ inUse: 5, limit: 6, quickestMs: 10 });
    // A slow scan (20 × the quickest: 5 × the tolerance) halves it, not more, although others were in flight.
    clock.t += 200;
    running.pop()!();
    expect(slots.status().unknown.limit).toBe(3);
    for (const r of running) r();
    known();
    expect(slots.inUse).toBe(0);
  });
});
