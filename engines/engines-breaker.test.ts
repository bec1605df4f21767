import { describe, expect, it } from 'vitest';
import { Breaker, type Transition } from './engines-breaker.js';

function breaker() {
  const transitions: Transition[] = [];
  const b = new Breaker({ failures: 3, window: 1_000, cooldown: 5_000 }, (t) => transitions.push(t));
  return { b, transitions };
}

describe('Breaker', () => {
  it('opens after N failures within the window, not when they are spread out', () => {
    const { b, transitions } = breaker();
    b.record(b.admit(0), 'timeout', 0);
    b.record(b.admit(1_100), 'timeout', 1_100);
    b.record(b.admit(1_500), 'refused', 1_500); // the first one is out of the window
    expect(b.state).toBe('closed');
    b.record(b.admit(1_600), null, 1_600); // a success does not forgive the recent failures
    b.record(b.admit(1_900), 'protocol', 1_900);
    expect(b.state).toBe('open');
    expect(transitions).toEqual([{ from: 'closed', to: 'open', reason: '3 failures within 1000 ms, last: protocol', at: 1_900 }]);
    expect(b.lastError).toBe('protocol');
  });

  it('skips while open, lets exactly one probe through after the cooldown, closes when it answers', () => {
    const { b, transitions } = breaker();
    for (const t of [0, 1, 2]) b.record(b.admit(t), 'timeout', t);
    expect(b.admit(4_000)).toBe('skip');
    expect(b.admit(5_002)).toBe('probe');
    expect(b.state).toBe('half-open');
    expect(b.admit(5_003)).toBe('skip');
    b.record('probe', null, 5_050);
    expect(b.state).toBe('closed');
    expect(b.admit(5_060)).toBe('scan');
    expect(transitions.map((t) => `${t.from}>${t.to}`)).toEqual(['closed>open', 'open>half-open', 'half-open>closed']);
  });

  it('goes back to open when the probe fails, for another full cooldown', () => {
    const { b, transitions } = breaker();
    for (const t of [0, 1, 2]) b.record(b.admit(t), 'timeout', t);
    expect(b.admit(6_000)).toBe('probe');
    b.record('probe', 'refused', 6_010);
    expect(b.state).toBe('open');
    expect(transitions.at(-1)?.reason).toBe('probe scan failed: refused');
    expect(b.admit(10_000)).toBe('skip');
    expect(b.admit(11_011)).toBe('probe');
  });

  it('ignores late results of scans admitted before it opened', () => {
    const { b } = breaker();
    const early = b.admit(0);
    for (const t of [1, 2, 3]) b.record(b.admit(t), 'timeout', t);
    b.record(early, null, 10);
    expect(b.state).toBe('open');
  });
});
