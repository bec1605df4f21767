import { Writable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { createLogger } from '../mta-log.js';
import { admissionSchema } from './admission-config.js';
import { Pressure, ScanTimings, type PressureSources } from './admission-pressure.js';

const config = admissionSchema.parse({ pressure: { interval: '100ms', rise: '1s', fall: '2s', hysteresis: 0.2 } }).pressure;

function world() {
  const logs: Array<Record<string, unknown>> = [];
  const log = createLogger('info', new Writable({ write(c, _e, cb) { for (const l of String(c).split('\n')) if (l) logs.push(JSON.parse(l)); cb(); } }));
  const v = { now: 0, queue: null as number | null, peeks: 0, loop: null as number | null, memory: 0.5 as number | null, disk: 0.5 as number | null, fsync: null as number | null, open: 0, limit: 10, wait: null as number | null, latency: null as number | null, mx: null as number | null, connSurge: null as number | null };
  const sources: PressureSources = {
    sessions: (peek) => { if (peek) v.peeks++; return { open: v.open, limit: v.limit }; },
    acceptQueue: () => v.queue,
    scans: () => ({ waitP90Ms: v.wait, latencyP90Ms: v.latency }),
    mxQueryRatio: () => v.mx,
    connectionSurgeRatio: () => v.connSurge,
  };
  const p = new Pressure(config, sources, { fsyncP99Ms: () => v.fsync, diskFree: () => v.disk }, log, { now: () => v.now, memoryFree: () => v.memory, loopDelayP99Ms: () => v.loop });
  const events: Array<[string, string, string]> = [];
  p.on('level', (level: string, previous: string, why: string) => events.push([level, previous, why]));
  /** Reads every second from now to now + seconds. */
  const tick = (seconds: number) => { for (let i = 0; i < seconds; i++) { v.now += 1000; p.read(); } };
  return { p, v, logs, events, tick, sources };
}

describe('Pressure', () => {
  it('reads every source into its signal, emits each change with the signals that drove it, and logs it', () => {
    const { p, v, logs, events, tick } = world();
    v.open = 6; v.wait = 1000; v.fsync = 20; v.mx = 1;
    tick(2);
    expect(p.level).toBe('busy');
    expect(p.signals()).toMatchObject({
      sessions: { value: 0.6, level: 'busy' }, scanWait: { value: 1000, level: 'busy' }, fsync: { value: 20, level: 'normal' },
      mxQueries: { value: 1, level: 'normal' }, diskFree: { value: 0.5, level: 'normal' }, memoryFree: { value: 0.5, level: 'normal' }, eventLoopDelay: { value: null, level: 'normal' },
    });
    expect(events).toEqual([['busy', 'normal', 'sessions=0.6 ≥ 0.5, scanWait=1000 ≥ 500']]);
    v.wait = 4000;
    tick(1);
    expect(p.level).toBe('busy');
    tick(1);
    expect(events.at(-1)).toEqual(['overload', 'busy', 'scanWait=4000 ≥ 3000']);
    const up = logs.find((l) => l.level === 'overload');
    expect(up).toMatchObject({ previous: 'busy', why: 'scanWait=4000 ≥ 3000', signals: { scanWait: 4000, sessions: 0.6 } });
    v.open = 1; v.wait = 10;
    tick(3);
    expect(events.at(-1)).toEqual(['busy', 'overload', 'scanWait=10 below overload for 2000ms']);
    tick(3);
    expect(p.level).toBe('normal');
    expect(logs.filter((l) => typeof l.msg === 'string' && (l.msg as string).startsWith('pressure ')).map((l) => l.msg)).toEqual([
      'pressure normal → busy: sessions=0.6 ≥ 0.5, scanWait=1000 ≥ 500',
      'pressure busy → overload: scanWait=4000 ≥ 3000',
      'pressure overload → busy: scanWait=10 below overload for 2000ms',
      'pressure busy → normal: scanWait=10 below busy for 2000ms',
    ]);
  });

  it('pauses the intake at once when free disk or memory reaches its overload floor, and opens it once clear by the hysteresis', () => {
    const { p, v, logs, tick } = world();
    const seen: string[] = [];
    p.on('intake', (state: string) => seen.push(state));
    tick(1);
    expect(p.intake()).toBe('open');
    v.disk = 0.04;
    tick(1);
    expect(p.intake()).toBe('paused');
    expect(p.level).toBe('normal'); // the level still waits for rise
    v.disk = 0.055; // above the floor, inside the band
    tick(1);
    expect(p.intake()).toBe('paused');
    v.disk = 0.07;
    tick(1);
    expect(p.intake()).toBe('open');
    v.memory = 0.01;
    tick(1);
    expect(p.intake()).toBe('paused');
    v.memory = null; // unknown counts as fine
    tick(1);
    expect(p.intake()).toBe('open');
    expect(seen).toEqual(['paused', 'open', 'paused', 'open']);
    expect(logs.find((l) => l.intake === 'paused')?.msg).toBe('queue intake paused (new mail is refused with 452 4.3.1): diskFree=0.04 ≤ 0.05');
  });

  it('takes no sessions signal from listeners without a limit, and new thresholds at the next read after apply', () => {
    const { p, v, tick } = world();
    v.limit = 0;
    tick(1);
    expect(p.signals().sessions.value).toBeNull();
    v.loop = 100;
    tick(3);
    expect(p.level).toBe('normal');
    p.apply({ ...config, eventLoopDelay: { busy: 50, overload: 90 } });
    tick(2);
    expect(p.level).toBe('overload');
    expect(p.status()).toMatchObject({ level: 'overload', since: v.now, intake: 'open', signals: { eventLoopDelay: { value: 100, level: 'overload', busy: 50, overload: 90, floor: false }, diskFree: { floor: true } } });
  });

  it('reads the other signals when a source throws, counts that one as normal, and logs it once until it answers again', () => {
    const { p, v, logs, tick, sources } = world();
    let broken = true;
    const sessions = sources.sessions;
    sources.sessions = () => { if (broken) throw new Error('listener gone'); return sessions(); };
    v.open = 9; v.loop = 600;
    tick(3);
    expect(p.level).toBe('overload');
    expect(p.signals().sessions).toEqual({ value: null, level: 'normal' });
    expect(p.signals().eventLoopDelay).toEqual({ value: 600, level: 'overload' });
    expect(logs.filter((l) => l.source === 'sessions').map((l) => l.msg)).toEqual(['pressure signal sessions cannot be read: it counts as normal until it can']);
    broken = false;
    tick(1);
    expect(p.signals().sessions).toEqual({ value: 0.9, level: 'overload' });
    broken = true;
    tick(1);
    expect(logs.filter((l) => l.source === 'sessions')).toHaveLength(2);
  });

  it('runs its own timer and event-loop monitor, unref\'d, and stop() ends them and drops back to normal', async () => {
    const logs: Array<Record<string, unknown>> = [];
    const log = createLogger('info', new Writable({ write(c, _e, cb) { logs.push(JSON.parse(String(c))); cb(); } }));
    const quick = { ...config, interval: 50, rise: 0, eventLoopDelay: { busy: 20, overload: 10_000 } };
    const p = new Pressure(quick, { sessions: () => ({ open: 0, limit: 1 }), scans: () => ({ waitP90Ms: null, latencyP90Ms: null }) }, { fsyncP99Ms: () => null, diskFree: () => null }, log);
    p.start();
    const until = Date.now() + 2000;
    while (p.level === 'normal' && Date.now() < until) {
      const spin = Date.now() + 60;
      while (Date.now() < spin) { /* hold the event loop */ }
      await new Promise((r) => setTimeout(r, 5));
    }
    expect(p.level).toBe('busy');
    expect(p.signals().eventLoopDelay.value).toBeGreaterThanOrEqual(20);
    p.stop();
    expect(p.level).toBe('normal');
    const count = logs.length;
    await new Promise((r) => setTimeout(r, 200));
    expect(logs.length).toBe(count);
  });

  it('keeps the scan slots\' waits and scans for the scans source (p90 over the window asked)', () => {
    const t = new ScanTimings();
    expect(t.p90(1000)).toEqual({ waitP90Ms: null, latencyP90Ms: null });
    for (let i = 1; i <= 10; i++) { t.waited(i * 100); t.scanned(i); }
    expect(t.p90(1000)).toEqual({ waitP90Ms: 900, latencyP90Ms: 9 });
  });

  it('reads the accept queue and sessions between full reads and enters overload at once on a surge, logged as one', () => {
    const { p, v, logs, events } = world();
    v.queue = 399; v.open = 8;
    p.readSurge();
    expect(p.level).toBe('normal');
    v.queue = 1500; v.now += 100;
    p.readSurge();
    expect(p.level).toBe('overload');
    expect(p.since).toBe(100);
    expect(v.peeks).toBe(2); // sessions were only peeked: the turned-away count stays for the full read
    expect(events).toEqual([['overload', 'normal', 'acceptQueue=1500 ≥ 400 (surge)']]);
    expect(logs.find((l) => l.level === 'overload')).toMatchObject({ previous: 'normal', signals: { acceptQueue: 1500, sessions: 0.8 } });
    expect(p.signals().acceptQueue).toEqual({ value: 1500, level: 'overload' });
    p.readSurge();
    expect(events).toHaveLength(1);
  });

  it('takes in a flood a known queue\'s guard met at the socket: overload at once, as a surge of the accept queue, logged with the listener', () => {
    const { p, v, logs, events } = world();
    v.open = 8; v.now = 10;
    // Not measuring (admission.mode off, or stopped): nothing moves.
    p.guarded('mx', 104, 100);
    expect(p.level).toBe('normal');
    p.start();
    p.guarded('mx', 104, 100);
    expect(p.level).toBe('overload');
    expect(p.since).toBe(10);
    expect(events).toEqual([['overload', 'normal', 'acceptQueue=104 ≥ 100 (the known queue\'s guard on mx)']]);
    expect(logs.find((l) => l.level === 'overload')).toMatchObject({ previous: 'normal', signals: { acceptQueue: 104 } });
    expect(p.signals().acceptQueue).toEqual({ value: 104, level: 'busy' });
    expect(p.signals().sessions).toEqual({ value: null, level: 'normal' });
    expect(v.peeks).toBe(0);
    p.guarded('mx', 300, 100);
    expect(events).toHaveLength(1);
    // It falls as any overload does: every signal below it for `fall` (2 s here), one level at a time.
    v.queue = 0; v.open = 0;
    for (let i = 0; i < 3; i++) { v.now += 1000; p.read(); }
    expect(p.level).toBe('busy');
    p.stop();
  });

  it('enters overload at once when the connections since the last surge reading come at 24 times their normal rate or more', () => {
    const { p, v, events } = world();
    v.connSurge = 23;
    p.readSurge();
    expect(p.level).toBe('normal');
    v.connSurge = 30; v.now += 100;
    p.readSurge();
    expect(p.level).toBe('overload');
    expect(events).toEqual([['overload', 'normal', 'connections=30 ≥ 24 (surge)']]);
    expect(p.signals().connections).toEqual({ value: 30, level: 'overload' });
  });

  it('runs the surge timer every surgeInterval: a flood is met within it, long before the next full read', async () => {
    const log = createLogger('silent');
    let queue = 0;
    const slow = { ...config, interval: 60_000, surgeInterval: 20 };
    const p = new Pressure(slow, { sessions: () => ({ open: 0, limit: 1 }), scans: () => ({ waitP90Ms: null, latencyP90Ms: null }), acceptQueue: () => queue }, { fsyncP99Ms: () => null, diskFree: () => null }, log);
    p.start();
    try {
      await new Promise((r) => setTimeout(r, 60));
      expect(p.level).toBe('normal');
      queue = 800;
      const t0 = Date.now();
      while (p.level === 'normal' && Date.now() - t0 < 1000) await new Promise((r) => setTimeout(r, 5));
      expect(p.level).toBe('overload');
      expect(Date.now() - t0).toBeLessThan(500);
    } finally {
      p.stop();
    }
  });
});
