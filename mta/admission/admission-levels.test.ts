import { describe, expect, it } from 'vitest';
import { admissionSchema } from './admission-config.js';
import { clearOf, initialLevels, signalLevel, stepLevels, surgeLevels, type Level, type SignalValues } from './admission-levels.js';

/** rise 2s, fall 10s, hysteresis 0.2; eventLoopDelay busy 150 / overload 500; diskFree floors 0.1 / 0.05. */
const config = admissionSchema.parse({ pressure: { rise: '2s', fall: '10s', hysteresis: 0.2 } }).pressure;

/** Feeds one reading per second (t = 0, 1, 2 … s) and returns the level after each. */
function run(readings: SignalValues[], cfg = config): { levels: Level[]; changes: Array<{ at: number; level: Level; previous: Level; why: string }> } {
  let state = initialLevels(0);
  const levels: Level[] = [];
  const changes: Array<{ at: number; level: Level; previous: Level; why: string }> = [];
  readings.forEach((values, i) => {
    const r = stepLevels(state, values, cfg, i * 1000);
    state = r.state;
    if (r.change) changes.push({ at: i, ...r.change });
    levels.push(state.level);
  });
  return { levels, changes };
}

const loop = (ms: number | null): SignalValues => ({ eventLoopDelay: ms });
const repeat = <T>(n: number, v: T): T[] => Array.from({ length: n }, () => v);

describe('a signal\'s own level', () => {
  it.each([
    ['eventLoopDelay', 149, 'normal'], ['eventLoopDelay', 150, 'busy'], ['eventLoopDelay', 499, 'busy'], ['eventLoopDelay', 500, 'overload'],
    ['sessions', 0.49, 'normal'], ['sessions', 0.5, 'busy'], ['sessions', 0.95, 'overload'],
    ['diskFree', 0.5, 'normal'], ['diskFree', 0.1, 'busy'], ['diskFree', 0.06, 'busy'], ['diskFree', 0.05, 'overload'], ['diskFree', 0, 'overload'],
    ['memoryFree', 0.11, 'normal'], ['memoryFree', 0.02, 'overload'],
    ['fsync', null, 'normal'], ['mxQueries', undefined, 'normal'], ['scanWait', Number.NaN, 'normal'],
  ] as const)('%s = %s is %s', (signal, value, level) => {
    expect(signalLevel(signal, value, config)).toBe(level);
  });

  it.each([
    ['eventLoopDelay', 121, 'busy', false], ['eventLoopDelay', 119, 'busy', true], ['eventLoopDelay', 399, 'overload', true], ['eventLoopDelay', 401, 'overload', false],
    ['diskFree', 0.11, 'busy', false], ['diskFree', 0.121, 'busy', true], ['diskFree', 0.059, 'overload', false], ['diskFree', 0.061, 'overload', true],
    ['sessions', null, 'overload', true],
  ] as const)('%s = %s is clear of %s (less hysteresis): %s', (signal, value, level, clear) => {
    expect(clearOf(signal, value, level, config)).toBe(clear);
  });
});

describe('the level over time', () => {
  it('enters busy only after the signal held for rise, and leaves it only after fall', () => {
    const { levels, changes } = run([...repeat(3, loop(200)), ...repeat(12, loop(10))]);
    expect(levels).toEqual(['normal', 'normal', 'busy', 'busy', ...repeat(9, 'busy'), 'normal', 'normal']);
    expect(changes.map((c) => [c.at, c.previous, c.level])).toEqual([[2, 'normal', 'busy'], [13, 'busy', 'normal']]);
    expect(changes[0].why).toBe('eventLoopDelay=200 ≥ 150');
    expect(changes[1].why).toBe('eventLoopDelay=10 below busy for 10000ms');
  });

  it('does not rise on flapping input that never holds for rise', () => {
    const flap = Array.from({ length: 30 }, (_, i) => loop(i % 2 === 0 ? 600 : 100));
    expect(run(flap).levels).toEqual(repeat(30, 'normal'));
  });

  it('does not fall while a signal flaps inside the hysteresis band, and falls once it stays clear for fall', () => {
    // Busy at t=2; then 140 and 130 (below 150 but not below 120) alternate: busy stays.
    const band = Array.from({ length: 20 }, (_, i) => loop(i % 2 === 0 ? 140 : 130));
    const { levels } = run([...repeat(3, loop(160)), ...band, ...repeat(11, loop(100))]);
    expect(levels.slice(2, 23)).toEqual(repeat(21, 'busy'));
    expect(levels.at(-2)).toBe('busy');
    expect(levels.at(-1)).toBe('normal');
  });

  it('restarts the fall when a signal comes back above the band', () => {
    const { levels } = run([...repeat(3, loop(200)), ...repeat(8, loop(10)), loop(130), ...repeat(10, loop(10)), loop(10)]);
    // The dip at t=11 reset the fall: still busy 10 s after the first clear reading.
    expect(levels[13]).toBe('busy');
    expect(levels[21]).toBe('busy');
    expect(levels[22]).toBe('normal');
  });

  it('jumps straight to overload, and comes down one level at a time', () => {
    const { levels, changes } = run([...repeat(3, loop(900)), ...repeat(25, loop(10))]);
    expect(changes.map((c) => [c.at, c.previous, c.level])).toEqual([[2, 'normal', 'overload'], [13, 'overload', 'busy'], [23, 'busy', 'normal']]);
    expect(changes[0].why).toBe('eventLoopDelay=900 ≥ 500');
    expect(levels[12]).toBe('overload');
  });

  it('goes from busy to overload once overload holds for rise, counted from when it began', () => {
    const { changes } = run([...repeat(3, loop(200)), ...repeat(3, loop(600))]);
    expect(changes.map((c) => [c.at, c.level])).toEqual([[2, 'busy'], [5, 'overload']]);
  });

  it('steps from overload down to busy while a signal stays busy, and no further', () => {
    const { levels } = run([...repeat(3, loop(900)), ...repeat(30, loop(300))]);
    expect(levels[12]).toBe('overload');
    expect(levels[13]).toBe('busy');
    expect(levels.at(-1)).toBe('busy');
  });

  it('counts missing signals as normal: nothing measured never raises the level, and lets it fall', () => {
    expect(run(repeat(10, {})).levels).toEqual(repeat(10, 'normal'));
    expect(run(repeat(10, { eventLoopDelay: null, sessions: null, diskFree: null, memoryFree: null })).levels).toEqual(repeat(10, 'normal'));
    const { levels } = run([...repeat(3, { sessions: 0.95 }), ...repeat(11, { sessions: null })]);
    expect(levels[2]).toBe('overload');
    expect(levels[13]).toBe('busy');
  });

  it('treats free disk and memory as floors: less is worse, and recovery needs the floor plus hysteresis', () => {
    const { levels, changes } = run([
      ...repeat(3, { diskFree: 0.04 }),
      ...repeat(12, { diskFree: 0.058 }), // above the overload floor, within its hysteresis band: stays
      ...repeat(11, { diskFree: 0.07 }), // clear of the overload floor, still busy
    ]);
    expect(changes[0]).toMatchObject({ at: 2, level: 'overload', why: 'diskFree=0.04 ≤ 0.05' });
    expect(levels[14]).toBe('overload');
    expect(levels[25]).toBe('busy');
    expect(run(repeat(5, { memoryFree: 0.9, diskFree: 0.9 })).levels).toEqual(repeat(5, 'normal'));
  });

  it('names every signal that drove a rise, and the same ones when the level falls', () => {
    const { changes } = run([...repeat(3, { eventLoopDelay: 600, sessions: 0.85, diskFree: 0.5 }), ...repeat(11, { eventLoopDelay: 5, sessions: 0.1, diskFree: 0.5 })]);
    expect(changes[0].why).toBe('eventLoopDelay=600 ≥ 500, sessions=0.85 ≥ 0.7');
    expect(changes[1].why).toBe('eventLoopDelay=5, sessions=0.1 below overload for 10000ms');
  });

  it('uses the settings it is given (zero rise and fall: every reading counts at once)', () => {
    const quick = admissionSchema.parse({ pressure: { rise: 0, fall: 0, hysteresis: 0 } }).pressure;
    expect(run([loop(200), loop(600), loop(10), loop(10), loop(10)], quick).levels).toEqual(['busy', 'overload', 'busy', 'normal', 'normal']);
  });

  it('enters overload at once on a reading at or past a signal\'s surge, from normal or busy, and comes down as usual', () => {
    // acceptQueue: overload 200, surge 400 (the defaults); rise 2s.
    const { levels, changes } = run([{ acceptQueue: 399 }, { acceptQueue: 400 }, ...repeat(11, { acceptQueue: 0 })]);
    expect(levels.slice(0, 2)).toEqual(['normal', 'overload']);
    expect(changes[0]).toMatchObject({ at: 1, previous: 'normal', level: 'overload', why: 'acceptQueue=400 ≥ 400 (surge)' });
    expect(changes[1]).toMatchObject({ at: 12, previous: 'overload', level: 'busy', why: 'acceptQueue=0 below overload for 10000ms' });
    const fromBusy = run([...repeat(3, loop(200)), { eventLoopDelay: 200, sessions: 1.2 }]);
    expect(fromBusy.changes.map((c) => [c.at, c.previous, c.level])).toEqual([[2, 'normal', 'busy'], [3, 'busy', 'overload']]);
    expect(fromBusy.changes[1].why).toBe('sessions=1.2 ≥ 0.9 (surge)');
  });

  it('has no surge where none is set: a signal far past overload still waits for rise, unless its surge is configured', () => {
    expect(run([loop(60_000), loop(60_000)]).levels).toEqual(['normal', 'normal']);
    const withSurge = admissionSchema.parse({ pressure: { rise: '2s', eventLoopDelay: { surge: '2s' } } }).pressure;
    expect(run([loop(1999), loop(2000)], withSurge).levels).toEqual(['normal', 'overload']);
    expect(() => admissionSchema.parse({ pressure: { acceptQueue: { surge: 100 } } })).toThrow(/surge must be at or past overload/);
  });

  it('judges only the signals it is given for a surge, and does nothing once overloaded', () => {
    const state = initialLevels(0);
    expect(surgeLevels(state, { acceptQueue: 50, sessions: 0.89 }, config, 5)).toBeNull();
    const up = surgeLevels(state, { acceptQueue: 1500 }, config, 5)!;
    expect(up.change).toEqual({ level: 'overload', previous: 'normal', why: 'acceptQueue=1500 ≥ 400 (surge)' });
    expect(up.state).toMatchObject({ level: 'overload', since: 5, drivers: ['acceptQueue'] });
    expect(surgeLevels(up.state, { acceptQueue: 5000 }, config, 6)).toBeNull();
  });
});
