// The spool journal: records read back whole or not at all, dropped messages stay dropped (their outcomes kept),
// concurrent appends share one fdatasync, segments are recycled once done with, and the oldest one
// is settled in place when too many are open.
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { open } from 'node:fs/promises';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { LatencyWindow } from '../base/base-latency-window.js';
import { decodeSegment, SpoolJournal } from './queue-journal.js';

let dir: string;
beforeEach(async () => { dir = await mkdtemp(join(tmpdir(), 'ichidan-journal-')); });
afterEach(async () => { await rm(dir, { recursive: true, force: true }); });

const body = (n: number, fill = 'x') => Buffer.from(fill.repeat(n));
/** Four segments open at most and two spares: small enough to reach in a test. */
const SMALL = { maxSegments: 4, spares: 2 };
const segments = async () => (await readdir(dir)).filter((n) => /^\d+\.seg$/.test(n)).sort();

describe('spool journal', () => {
  it('reads back what was appended and not dropped, after the process is gone', async () => {
    const fsyncs = new LatencyWindow();
    const j = new SpoolJournal(dir, fsyncs);
    expect((await j.load()).messages).toEqual([]);
    // Appended together: one batch, one fdatasync for the first and one for the rest at most.
    await Promise.all([1, 2, 3, 4, 5].map((i) => j.append(`m${i}`, { id: `m${i}`, n: i }, body(100 * i, String(i)))));
    expect(fsyncs.percentile(50, 60_000)).not.toBeNull();
    await j.outcome('m3', { updates: [{ id: 0, state: 'delivered' }], now: 1 });
    await j.outcome('m2', { updates: [{ id: 0, state: 'bounced' }], now: 2 });
    await j.drop(['m2', 'unknown']);
    expect(j.holds('m2')).toBe(false);
    expect(j.holds('m3')).toBe(true);
    await j.close();

    const again = new SpoolJournal(dir, new LatencyWindow());
    const contents = await again.load();
    const got = contents.messages;
    // Every outcome, in order, a dropped message's too: its done state may not have reached the
    // device before the drop did, and then only the outcome keeps it from being delivered again.
    expect(contents.outcomes).toEqual([
      { id: 'm3', record: { updates: [{ id: 0, state: 'delivered' }], now: 1 } },
      { id: 'm2', record: { updates: [{ id: 0, state: 'bounced' }], now: 2 } },
    ]);
    expect(got.map((m) => m.id).sort()).toEqual(['m1', 'm3', 'm4', 'm5']);
    const m4 = got.find((m) => m.id === 'm4')!;
    expect(m4.record).toEqual({ id: 'm4', n: 4 });
    expect(m4.body.equals(body(400, '4'))).toBe(true);
    await again.recycleAll();
    await again.close();
    // Recycled: the next start finds nothing to replay, and writes a new generation.
    const third = new SpoolJournal(dir, new LatencyWindow());
    expect((await third.load()).messages).toEqual([]);
    await third.append('n1', {}, body(10));
    await third.close();
    const fourth = new SpoolJournal(dir, new LatencyWindow());
    expect((await fourth.load()).messages.map((m) => m.id)).toEqual(['n1']);
    await fourth.close();
  });

  it('stops at a torn record, a bad checksum or another generation', async () => {
    const j = new SpoolJournal(dir, new LatencyWindow());
    await j.load();
    await j.append('a', { a: 1 }, body(50));
    await j.append('b', { b: 1 }, body(60));
    await j.close();
    const [name] = await segments();
    const file = await readFile(join(dir, name));
    // The segment was zeroed ahead of its records: they end at its last byte that is not zero.
    let end = file.length;
    while (end > 0 && file[end - 1] === 0) end--;
    expect(file.length).toBeGreaterThan(end);
    const data = file.subarray(0, end);
    const generation = Number(name.slice(0, 10));
    expect(decodeSegment(data, generation).map((r) => r.id)).toEqual(['a', 'b']);
    expect(decodeSegment(data.subarray(0, data.length - 1), generation).map((r) => r.id)).toEqual(['a']);
    const flipped = Buffer.from(data);
    flipped[data.length - 5] ^= 1;
    expect(decodeSegment(flipped, generation).map((r) => r.id)).toEqual(['a']);
    expect(decodeSegment(data, generation + 1)).toEqual([]);
    // A recycled segment's older records (another generation) are not read as this one's.
    await writeFile(join(dir, name), data.subarray(0, data.length - 1));
    const again = new SpoolJournal(dir, new LatencyWindow());
    expect((await again.load()).messages.map((m) => m.id)).toEqual(['a']);
    await again.close();
  });

  it('recycles segments whose messages are all dropped, and settles the oldest when too many are open', async () => {
    const j = new SpoolJournal(dir, new LatencyWindow(), 1000, 0, SMALL);
    await j.load();
    const settled: string[][] = [];
    let syncs = 0;
    // Every segment that goes is preceded by a synced commit of the database; only queued messages are settled.
    j.settle = async (ids) => { syncs++; if (ids.length > 0) settled.push(ids); };
    // Each append fills a segment (1000 bytes): the next one starts a new segment.
    for (let i = 0; i < 3; i++) {
      await j.append(`d${i}`, {}, body(1000));
      j.stored(`d${i}`);
    }
    await j.drop(['d0', 'd1']);
    await j.append('x', {}, body(10));
    j.stored('x');
    for (let i = 0; i < 100 && j.retired < 2; i++) await new Promise((r) => setTimeout(r, 10));
    // d0's and d1's segments went (one kept as a spare, reused by the next segment).
    expect(j.retired).toBe(2);
    expect(syncs).toBe(2);
    expect(settled).toEqual([]);
    // d2 stays queued while more segments fill: past four open, its segment is settled and goes.
    for (let i = 0; i < 4; i++) {
      await j.append(`k${i}`, {}, body(1000));
      j.stored(`k${i}`);
    }
    // Retiring runs after the batch's waiters are answered.
    for (let i = 0; i < 100 && ((await segments()).length > 4 || settled.length === 0); i++) await new Promise((r) => setTimeout(r, 10));
    expect(settled[0]).toEqual(['d2']);
    expect(j.settled).toBe(1);
    expect(j.holds('d2')).toBe(false);
    expect((await segments()).length).toBeLessThanOrEqual(4);
    await j.close();
    // What was settled is not in the journal any more; what was not, is.
    const again = new SpoolJournal(dir, new LatencyWindow(), 1000);
    const ids = (await again.load()).messages.map((m) => m.id).sort();
    expect(ids).not.toContain('d2');
    expect(ids).toContain('k3');
  });

  it('does not settle a segment whose message has no queue record yet, and a clean stop settles everything', async () => {
    const j = new SpoolJournal(dir, new LatencyWindow(), 1000);
    await j.load();
    const settled: string[][] = [];
    j.settle = async (ids) => { settled.push([...ids].sort()); };
    await j.append('pending', {}, body(1000));
    for (let i = 0; i < 5; i++) {
      await j.append(`k${i}`, {}, body(1000));
      j.stored(`k${i}`);
    }
    expect(settled).toEqual([]);
    expect(j.holds('pending')).toBe(true);
    j.stored('pending');
    await j.retireAll();
    expect(settled).toEqual([['k0', 'k1', 'k2', 'k3', 'k4', 'pending']]);
    await j.close();
    expect(await segments()).toEqual([]);
    expect((await new SpoolJournal(dir, new LatencyWindow()).load()).messages).toEqual([]);
  });

  /** Fails the next batch's fdatasync once asked (its records are written and whole by then). */
  class FailingSync extends LatencyWindow {
    failNext = false;
    override async time<T>(operation: () => Promise<T>): Promise<T> {
      const result = await operation();
      if (this.failNext) { this.failNext = false; throw Object.assign(new Error('injected EIO'), { code: 'EIO' }); }
      return result;
    }
  }

  it('leaves nothing of a batch that failed to be read back: its records are cut off', async () => {
    const fsyncs = new FailingSync();
    const j = new SpoolJournal(dir, fsyncs);
    await j.load();
    await j.append('a', {}, body(50));
    fsyncs.failNext = true;
    await expect(j.append('b', {}, body(60))).rejects.toThrow('injected EIO');
    await j.append('c', {}, body(70));
    await j.close();
    // `b` got an error (its client a 4xx): read back, it would be delivered as a second copy.
    expect((await new SpoolJournal(dir, new LatencyWindow()).load()).messages.map((m) => m.id)).toEqual(['a', 'c']);
  });

  it('journals a failed batch\'s messages as dropped when its records cannot be cut off', async () => {
    const fsyncs = new FailingSync();
    const j = new SpoolJournal(dir, fsyncs);
    await j.load();
    await j.append('a', {}, body(50));
    const probe = await open(join(dir, 'probe'), 'w');
    const truncate = vi.spyOn(Object.getPrototypeOf(probe) as { truncate: () => Promise<void> }, 'truncate')
      .mockRejectedValueOnce(Object.assign(new Error('injected EIO'), { code: 'EIO' }));
    await probe.close();
    try {
      fsyncs.failNext = true;
      await expect(j.append('b', {}, body(60))).rejects.toThrow('injected EIO');
      expect(truncate).toHaveBeenCalledTimes(1);
    } finally {
      truncate.mockRestore();
    }
    await rm(join(dir, 'probe'));
    // Still whole in its segment: the next batch (in a new one) says it is dropped.
    const [first] = await segments();
    expect(decodeSegment(await readFile(join(dir, first)), Number(first.slice(0, 10))).map((r) => r.id)).toEqual(['a', 'b']);
    await j.append('c', {}, body(70));
    await j.close();
    expect((await new SpoolJournal(dir, new LatencyWindow()).load()).messages.map((m) => m.id)).toEqual(['a', 'c']);
  });

  it('goes on appending while the oldest segment is being settled', async () => {
    const j = new SpoolJournal(dir, new LatencyWindow(), 1000, 0, SMALL);
    await j.load();
    let release!: () => void;
    const blocked = new Promise<void>((r) => { release = r; });
    let settling = 0;
    j.settle = async () => { settling++; await blocked; };
    // Past four open segments the oldest is settled: that settle does not end until released.
    for (let i = 0; i < 5; i++) {
      await j.append(`k${i}`, {}, body(1000));
      j.stored(`k${i}`);
    }
    for (let i = 0; i < 100 && settling === 0; i++) await new Promise((r) => setTimeout(r, 10));
    expect(settling).toBe(1);
    // A 250 waits on this append: it must not wait for the settling's fdatasyncs.
    const appended = await Promise.race([j.append('next', {}, body(10)).then(() => 'appended'), new Promise((r) => setTimeout(() => r('waited'), 1000))]);
    expect(appended).toBe('appended');
    release();
    await j.close();
    expect(j.settled).toBeGreaterThanOrEqual(1);
  });

  it('writes a lazy outcome with the next batch, or on its own a moment later, and before a close', async () => {
    let count = 0;
    const fsyncs = new (class extends LatencyWindow {
      override time<T>(operation: () => Promise<T>): Promise<T> { count++; return super.time(operation); }
    })();
    const j = new SpoolJournal(dir, fsyncs);
    await j.load();
    await j.append('m1', {}, body(10));
    const syncs = () => count;
    const before = syncs();
    let done = false;
    const first = j.outcome('m1', { updates: [], now: 1 }, { lazy: true }).then(() => { done = true; });
    await new Promise((r) => setTimeout(r, 50));
    expect(done).toBe(false);
    // The next append takes it along: one sync for both.
    await j.append('m2', {}, body(10));
    await first;
    expect(syncs() - before).toBe(1);
    // Alone, it goes within a moment.
    const started = performance.now();
    await j.outcome('m2', { updates: [], now: 2 }, { lazy: true });
    expect(performance.now() - started).toBeGreaterThanOrEqual(150);
    // A drop of ids it does not hold (messages too large for it) still writes the waiting outcomes first.
    let written = false;
    void j.outcome('large', { updates: [], now: 2.5 }, { lazy: true }).then(() => { written = true; });
    await j.drop(['large']);
    expect(written).toBe(true);
    // Waiting when the journal closes: written first.
    void j.outcome('m1', { updates: [], now: 3 }, { lazy: true });
    await j.close();
    const { outcomes } = await new SpoolJournal(dir, new LatencyWindow()).load();
    expect(outcomes.map((o) => (o.record as { now: number }).now)).toEqual([1, 2, 2.5, 3]);
  });

  it('zeroes a growing segment ahead of its records and reads back only the records', async () => {
    const j = new SpoolJournal(dir, new LatencyWindow());
    await j.load();
    for (let i = 0; i < 3; i++) await j.append(`z${i}`, { i }, body(100 * (i + 1)));
    await j.close();
    const [name] = await segments();
    const file = await readFile(join(dir, name));
    // Records take about 700 bytes; the file was zeroed well past them, in one step.
    expect(file.length).toBeGreaterThanOrEqual(64 * 1024);
    expect(file.subarray(2048).every((b) => b === 0)).toBe(true);
    expect((await new SpoolJournal(dir, new LatencyWindow()).load()).messages.map((m) => m.id)).toEqual(['z0', 'z1', 'z2']);
  });

  it('lets a segment grow without zeroing it once batches are large', async () => {
    const j = new SpoolJournal(dir, new LatencyWindow());
    await j.load();
    for (let i = 0; i < 12; i++) await j.append(`big${i}`, { i }, body(64 * 1024));
    await j.close();
    const [name] = await segments();
    const file = await readFile(join(dir, name));
    // The records end where the file does: nothing was zeroed ahead of the last ones.
    expect(file.at(-1)).toBe('x'.charCodeAt(0));
    expect((await new SpoolJournal(dir, new LatencyWindow()).load()).messages).toHaveLength(12);
  });
});
