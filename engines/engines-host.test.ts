import pino from 'pino';
import { describe, expect, it } from 'vitest';
import { engineSchema } from './engines-config.js';
import { EngineHost, type EngineEvent } from './engines-host.js';

const deps = { hostname: 'mx.test', resolver: null, log: pino({ level: 'silent' }) };
const clamd = (name: string, port = 3310, extra: Record<string, unknown> = {}) =>
  engineSchema.parse({ name, type: 'clamd', servers: [{ host: '127.0.0.1', port }], ...extra });

function host() {
  const events: EngineEvent[] = [];
  const h = new EngineHost(new Map(), (e) => events.push(e));
  const log = () => events.map((e) => `${e.engine} ${e.event}`);
  return { h, events, log };
}

describe('EngineHost', () => {
  it('keeps an unchanged engine across snapshots, replaces a changed one, and closes what no snapshot uses', () => {
    const { h, log } = host();
    const first = h.snapshot([clamd('a'), clamd('b')], deps);
    const second = h.snapshot([clamd('a'), clamd('b', 3311)], deps);
    expect(second.entries[0].engine).toBe(first.entries[0].engine);
    expect(second.entries[1].engine).not.toBe(first.entries[1].engine);
    expect(log()).toEqual(['a added', 'b added', 'b replaced']);
    first.release();
    // The old b is closed: only the first snapshot used it. a is still used by the second.
    expect(log().slice(3)).toEqual(['b closed']);
    const third = h.snapshot([clamd('a')], deps);
    expect(log().slice(4)).toEqual(['b removed']);
    second.release();
    expect(log().slice(5)).toEqual(['b closed']);
    third.release();
    expect(log().slice(6)).toEqual(['a closed']);
  });

  it('opens the breaker on failures of the engine, never on messages it cannot judge', () => {
    const { h } = host();
    const held = h.snapshot([clamd('a', 3310, { breaker: { failures: 3, window: '60s', cooldown: '10m' } })], deps);
    const [a] = held.entries;
    const now = Date.now();
    for (let n = 0; n < 20; n++) {
      a.health!.record(a.health!.admit(now), { outcome: { status: 'unscannable', reason: 'limit of the scanner exceeded (Heuristics.Limits.Exceeded.MaxRecursion)' } }, now);
    }
    expect(h.list()[0]).toMatchObject({ breaker: 'closed', scans: 20, failures: 0 });
    for (const error of ['timeout', 'refused', 'protocol'] as const) a.health!.record(a.health!.admit(now), { outcome: { status: 'error', error, message: error } }, now);
    expect(h.list()[0]).toMatchObject({ breaker: 'open', failures: 3 });
  });

  it('rebuilds every engine when what they depend on changes', () => {
    const { h } = host();
    const one = h.snapshot([clamd('a')], deps, 'dns=1');
    const two = h.snapshot([clamd('a')], deps, 'dns=2');
    expect(two.entries[0].engine).not.toBe(one.entries[0].engine);
  });

  it("honours the operator's switch at the next scan, and lists state, breaker and counters", () => {
    const switches = new Map([['b', { reason: 'persisted', at: 1 }]]);
    const h = new EngineHost(switches, () => undefined);
    const held = h.snapshot([clamd('a'), clamd('b')], deps);
    const [a, b] = held.entries;
    expect(b.health!.admit(Date.now())).toBe('skip');
    expect(a.health!.admit(Date.now())).toBe('scan');
    expect(h.disable('a', 'maintenance')).toBe(true);
    expect(a.health!.admit(Date.now())).toBe('skip');
    expect(h.disable('nope', 'x')).toBe(false);
    expect(h.enable('b')).toBe(true);
    expect(h.enable('b')).toBe(false);
    expect(b.health!.admit(Date.now())).toBe('scan');
    b.health!.record('scan', { outcome: { status: 'error', error: 'refused', message: 'ECONNREFUSED' } }, Date.now());
    b.health!.record('scan', { outcome: { status: 'error', error: 'too-large', message: 'limit' } }, Date.now());
    const list = Object.fromEntries(h.list().map((e) => [e.name, e]));
    expect(list.a).toMatchObject({ state: 'disabled', disabledReason: 'maintenance', breaker: 'closed', skipped: 1 });
    expect(list.b).toMatchObject({ state: 'enabled', scans: 2, failures: 1, lastError: 'refused: ECONNREFUSED', skipped: 1 });
    expect(switches.has('a')).toBe(true);
  });

  it('opens an engine\'s breaker after its configured failures', () => {
    const { h, events } = host();
    const [e] = h.snapshot([clamd('a', 3310, { breaker: { failures: 2, window: '1m', cooldown: '1m' } })], deps).entries;
    const fail = { outcome: { status: 'error' as const, error: 'timeout' as const, message: 'deadline' } };
    e.health!.record(e.health!.admit(Date.now()), fail, Date.now());
    e.health!.record(e.health!.admit(Date.now()), fail, Date.now());
    expect(e.health!.admit(Date.now())).toBe('skip');
    expect(events.at(-1)).toMatchObject({ engine: 'a', event: 'breaker', from: 'closed', to: 'open' });
  });

  it('learns through buildEngineSet that a config with no engines removed them all', async () => {
    const { buildEngineSet } = await import('./index.js');
    const { parseConfig } = await import('../mta/mta-config.js');
    const { h, log } = host();
    const withOne = buildEngineSet(parseConfig({ engines: [{ name: 'a', type: 'clamd' }] }), h, deps);
    const none = buildEngineSet(parseConfig({}), h, deps);
    expect(none.size).toBe(0);
    expect(h.list()).toEqual([]);
    expect(h.disable('a', 'gone')).toBe(false);
    withOne.release();
    expect(log()).toEqual(['a added', 'a removed', 'a closed']);
    none.release();
  });
});
