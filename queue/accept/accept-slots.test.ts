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

  it('holds unknown scans at the engines\' limit while known ones go on, and lets more in as scans end quickly', async () => {
    const clock = { t: 1_000_000 };
    const slots = new ScanSlots(32, 0.25, undefined, { floor: 2, tolerance: 2 }, () => clock.t);
    expect(slots.status().unknown).toEqual({ inUse: 0, limit: 2, quickestMs: null });
    const a = await slots.take('unknown');
    const b = await slots.take('unknown');
    let third = false;
    const c = slots.take('unknown').then((r) => { third = true; return r; });
    await tick();
    expect(third).toBe(false);
    // A known sender's message is not held by the unknown ones' limit.
    const known = await slots.take('known');
    expect(slots.inUse).toBe(3);
    clock.t += 10;
    a(); // quick, with one held: the limit grows to 3 and the waiter goes in
    expect(slots.status().unknown).toEqual({ inUse: 2, limit: 3, quickestMs: 10 });
    (await c)();
    expect(third).toBe(true);
    // A slow scan (10 × the quickest) halves it.
    clock.t += 200;
    b();
    expect(slots.status().unknown.limit).toBe(2);
    known();
    expect(slots.inUse).toBe(0);
  });
});
