import pino from 'pino';
import { describe, expect, it } from 'vitest';
import { configSchema } from '../mta-config-schema.js';
import { Admission, type Level, type Standing } from './admission.js';

function world(over: Record<string, unknown> = {}) {
  const config = configSchema.parse({
    listeners: [
      { name: 'mx', role: 'mx', port: 0, maxClients: 10 },
      { name: 'submission', role: 'submission', port: 0 },
    ],
    ...over,
  });
  const standings = new Map<string, Standing>();
  const users = new Map<string, Standing>();
  const state = { level: 'normal' as Level, intake: 'open' as 'open' | 'paused' };
  const counted: string[] = [];
  const clock = { now: 1_000_000_000 };
  const admission = new Admission(config, {
    now: () => clock.now,
    senders: { standing: (a) => standings.get(a) ?? 'unknown', standingOf: (_k, u) => users.get(u) ?? 'unknown' },
    pressure: { get level() { return state.level; }, intake: () => state.intake },
    count: (point, action, reason) => counted.push(`${point}:${action}:${reason}`),
    log: pino({ level: 'silent' }),
  });
  const mx = config.listeners[0];
  const submission = config.listeners[1];
  return { admission, standings, users, state, counted, mx, submission, clock };
}

describe('the admission of one node', () => {
  it('measures connections to the guarded listeners, refused ones too, against their normal rate once learned', () => {
    const w = world({ admission: { pressure: { learnAfter: '10s' } } });
    let n = 0;
    const second = (count: number, listener = w.mx) => {
      for (let i = 0; i < count; i++) {
        const id = `c${n++}`;
        w.admission.connect(id, `192.0.2.${i % 250}`, listener, 0);
        w.admission.closed(id);
      }
      w.clock.now += 1000;
    };
    for (let s = 0; s < 9; s++) second(4);
    expect(w.admission.connectionRatio()).toBeNull();
    // While the normal rate is learned, the last ten seconds' stands in for it (the guard's threshold).
    expect(w.admission.normalConnectionRate()).toBeCloseTo(3.6, 1);
    second(4);
    expect(w.admission.connectionRatio()).toBeCloseTo(1, 0);
    expect(w.admission.normalConnectionRate()).toBeCloseTo(4, 0);
    // The submission listener is not guarded: its connections are no part of it.
    for (let s = 0; s < 10; s++) second(200, w.submission);
    expect(w.admission.connectionRatio()).toBeLessThan(1.5);
    // A flood, turned away at the door, still counts: the level does not fall while it lasts.
    w.state.level = 'overload';
    for (let s = 0; s < 10; s++) second(200);
    expect(w.counted.filter((c) => c === 'connect:refuse:overload').length).toBe(2000);
    expect(w.admission.connectionRatio()).toBeGreaterThan(30);
  });

  it('counts an unknown network\'s open sessions across its addresses while busy, and gives them back at close', () => {
    const w = world();
    w.state.level = 'busy';
    expect(w.admission.connect('a', '192.0.2.1', w.mx, 0)).toMatchObject({ action: 'greet', reason: 'busy_delay' });
    expect(w.admission.connect('b', '192.0.2.2', w.mx, 1)).toMatchObject({ action: 'greet', reason: 'busy_delay' });
    // The third from the same /24 is one too many (busy.maxConnections 2); another /24 is not.
    expect(w.admission.connect('c', '192.0.2.3', w.mx, 2)).toMatchObject({ action: 'refuse', reason: 'busy_connections' });
    expect(w.admission.connect('d', '198.51.100.1', w.mx, 3)).toMatchObject({ action: 'greet' });
    w.admission.closed('c');
    w.admission.closed('a');
    expect(w.admission.connect('e', '192.0.2.4', w.mx, 2)).toMatchObject({ action: 'greet', reason: 'busy_delay' });
    for (const id of ['b', 'd', 'e']) w.admission.closed(id);
    // The one turned away is part of the demand the sessions signal reads, once.
    expect(w.admission.takeTurnedAway()).toBe(1);
    expect(w.admission.takeTurnedAway()).toBe(0);
    expect(w.admission.sessions).toBe(0);
    expect(w.counted).toContain('connect:delay:busy_delay');
    expect(w.counted).toContain('connect:refuse:busy_connections');
  });

  it('counts one network\'s turned-away connections up to busy.maxConnections a reading', () => {
    const w = world();
    w.state.level = 'overload';
    for (let i = 0; i < 50; i++) {
      expect(w.admission.connect(`x${i}`, '192.0.2.1', w.mx, 0)).toMatchObject({ action: 'refuse' });
      w.admission.closed(`x${i}`);
    }
    expect(w.admission.connect('y', '198.51.100.1', w.mx, 0)).toMatchObject({ action: 'refuse' });
    expect(w.admission.takeTurnedAway()).toBe(3);
  });

  it('leaves listeners it does not guard alone at the door, but pauses their intake too', () => {
    const w = world();
    w.state.level = 'overload';
    expect(w.admission.connect('s', '192.0.2.9', w.submission, 0)).toMatchObject({ action: 'greet', reason: 'not_guarded' });
    expect(w.admission.rcpt('s')).toBeNull();
    expect(w.admission.mail('s')).toBeNull();
    w.state.intake = 'paused';
    expect(w.admission.mail('s')?.code).toBe(452);
    expect(w.counted).toContain('mail:refuse:intake_paused');
  });

  it('a session whose AUTH user is known becomes a known sender: its scans take the reserved slots', () => {
    const w = world({ admission: { overload: { refuse: 'rcpt' } } });
    w.users.set('alice', 'known');
    w.state.level = 'overload';
    expect(w.admission.connect('a', '192.0.2.1', w.mx, 0)).toMatchObject({ action: 'greet', deferRcpt: true });
    expect(w.admission.priority('a')).toBe('unknown');
    expect(w.admission.rcpt('a')?.code).toBe(451);
    w.admission.authenticated('a', 'mallory');
    expect(w.admission.priority('a')).toBe('unknown');
    w.admission.authenticated('a', 'alice');
    expect(w.admission.priority('a')).toBe('known');
    expect(w.admission.rcpt('a')).toBeNull();
  });

  it('known networks pass at every level; blocked ones never', () => {
    const w = world();
    w.standings.set('192.0.2.1', 'known');
    w.standings.set('203.0.113.5', 'blocked');
    w.state.level = 'overload';
    expect(w.admission.connect('k', '192.0.2.1', w.mx, 9)).toMatchObject({ action: 'greet', reason: 'known' });
    expect(w.admission.priority('k')).toBe('known');
    expect(w.admission.connect('u', '192.0.2.77', w.mx, 0)).toMatchObject({ action: 'refuse', reason: 'overload' });
    w.state.level = 'normal';
    expect(w.admission.connect('b', '203.0.113.5', w.mx, 0)).toMatchObject({ action: 'refuse', reason: 'blocked' });
  });

  it('a reload changes which listeners are guarded and the scan slots', () => {
    const w = world();
    const next = configSchema.parse({
      listeners: [{ name: 'mx', role: 'mx', port: 0 }, { name: 'submission', role: 'submission', port: 0 }],
      admission: { listeners: ['submission'], scans: 4 },
    });
    w.admission.apply(next);
    expect(w.admission.guards(next.listeners[0])).toBe(false);
    expect(w.admission.guards(next.listeners[1])).toBe(true);
    expect(w.admission.slots.reserved).toBe(1);
  });
});
