import { describe, expect, it } from 'vitest';
import { BOUNDS, EngineStats, percentile, type RunRecord, type ScanRecord } from './engines-records.js';

const at = Date.parse('2026-11-25T12:00:00Z');
const run = (engine: string, status: RunRecord['status'], extra: Partial<RunRecord> = {}): RunRecord =>
  ({ engine, kind: 'av', shadow: false, status, version: null, ms: 2, ...extra });
const record = (runs: RunRecord[], when = at): ScanRecord => ({ queueId: 'Q', at: when, generation: 1, action: 'accept', reason: '', tenants: ['t'], ms: 3, overheadMs: 0.1, runs });

describe('EngineStats', () => {
  it('counts per engine and day, with detections by one engine alone', () => {
    const s = new EngineStats();
    s.add(record([run('clamav', 'infected'), run('icap', 'infected')]));
    s.add(record([run('clamav', 'clean'), run('icap', 'infected')]));
    s.add(record([run('clamav', 'error', { error: 'timeout' }), run('icap', 'error', { error: 'refused' })]));
    s.add(record([run('clamav', 'skipped', { skipped: 'size' }), run('trial', 'infected', { shadow: true })]));
    s.add(record([run('clamav', 'clean')], at + 86_400_000));
    const rows = Object.fromEntries(s.takeDirty().map((r) => [`${r.day} ${r.engine}`, r]));
    expect(rows['2026-11-25 clamav']).toMatchObject({ scanned: 2, detected: 1, detectedAlone: 0, errors: 0, timeouts: 1, skipped: 1 });
    expect(rows['2026-11-25 icap']).toMatchObject({ scanned: 2, detected: 2, detectedAlone: 1, errors: 1, timeouts: 0 });
    expect(rows['2026-11-25 trial']).toMatchObject({ scanned: 1, detected: 1, detectedAlone: 1 });
    expect(rows['2026-11-26 clamav']).toMatchObject({ scanned: 1 });
    expect(s.takeDirty()).toEqual([]);
  });

  it('continues from stored rows after a restart', () => {
    const s = new EngineStats();
    const day = new Date().toISOString().slice(0, 10);
    s.load([{ day, engine: 'clamav', scanned: 5, detected: 1, detectedAlone: 1, errors: 0, timeouts: 0, skipped: 0, histogram: new Array(BOUNDS.length).fill(0) }]);
    s.add(record([run('clamav', 'clean')], Date.now()));
    expect(s.takeDirty()[0]).toMatchObject({ scanned: 6, detected: 1 });
  });
});

describe('percentile', () => {
  it('reads p50 and p99 from the histogram buckets', () => {
    const h = new Array(BOUNDS.length).fill(0);
    const bucket = (ms: number) => BOUNDS.findIndex((b) => ms <= b);
    h[bucket(2)] = 98;
    h[bucket(300)] = 2;
    expect(percentile(h, 0.5)).toBe(BOUNDS[bucket(2)]);
    expect(percentile(h, 0.99)).toBe(BOUNDS[bucket(300)]);
    expect(BOUNDS[bucket(2)]).toBeGreaterThanOrEqual(2);
    expect(BOUNDS[bucket(2)]).toBeLessThan(2.5);
    expect(percentile(new Array(BOUNDS.length).fill(0), 0.5)).toBeNull();
  });
});
