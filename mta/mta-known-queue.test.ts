// The daemon's steering of the known queues, with listeners and the admission replaced: what each
// level, the drain and the settings make the kernel do, and a guard's surge taken in before a steering.
import { Writable } from 'node:stream';
import { afterEach, describe, expect, it, vi } from 'vitest';
import type { Admission, Level } from './admission/admission.js';
import type { Steering, Surge } from './ingress/ingress-known-queue.js';
import type { Listener } from './ingress/ingress-server.js';
import { parseConfig } from './mta-config.js';
import { KnownQueueSteering } from './mta-known-queue.js';
import { createLogger } from './mta-log.js';

const OVERLOADED = '421 4.7.0 server busy with other mail, try again later';
const DRAINING = '421 4.3.2 this server is being drained and takes no new mail, try another';

function world(admission: Record<string, unknown> = {}) {
  const state = { level: 'normal' as Level, draining: false, config: parseConfig({ trustedNetworks: ['192.0.2.0/24'], admission }), rate: 0 };
  const steered: Steering[] = [];
  const surges: Surge[] = [];
  const refusedAtSocket: number[] = [];
  const listener = {
    spec: { name: 'mx' },
    steerKnown: (s: Steering) => steered.push(s),
    takeSurge: () => surges.shift() ?? null,
    // A surge not taken in yet shows as refusing, as the real status does.
    knownQueue: () => ({ networks: 1, left: 0, accepted: 0, refusing: surges.length > 0, refused: 0, surges: 0 }),
  } as unknown as Listener;
  const surged: Array<[string, number, number]> = [];
  const log = createLogger('silent', new Writable({ write: (_c, _e, cb) => cb() }));
  const steering = new KnownQueueSteering(
    () => state.config, () => null, { refusedAtSocket: (n: number) => refusedAtSocket.push(n), normalConnectionRate: () => state.rate } as unknown as Admission,
    () => state.level, () => state.draining, () => [listener], log, (l, waiting, at) => {
      // As the pressure does: overload at once.
      surged.push([l, waiting, at]);
      state.level = 'overload';
    },
  );
  return { state, steering, steered, surges, surged };
}

describe('KnownQueueSteering', () => {
  afterEach(() => {
    vi.useRealTimers();
  });

  it('looks for a guard\'s surge every 100 ms once started, not only at the second\'s refresh', () => {
    vi.useFakeTimers();
    const { steering, surges, surged } = world();
    steering.start();
    vi.advanceTimersByTime(1000);
    surges.push({ waiting: 101 });
    vi.advanceTimersByTime(100);
    expect(surged).toEqual([['mx', 101, 16]]);
    steering.stop();
  });

  it('arms the guard below overload, refuses everyone else at the socket under overload, and answers with the drain\'s reply while draining', () => {
    const { state, steering } = world();
    expect(steering.steering()).toEqual({ networks: ['192.0.2.0/24'], blocked: [], refuseOthers: false, surgeAt: 16, refusal: OVERLOADED });
    state.level = 'busy';
    expect(steering.steering()).toMatchObject({ refuseOthers: false, surgeAt: 16 });
    state.level = 'overload';
    expect(steering.steering()).toMatchObject({ refuseOthers: true, surgeAt: null, refusal: OVERLOADED });
    state.draining = true;
    expect(steering.steering()).toMatchObject({ refuseOthers: true, refusal: DRAINING });
  });

  it('arms no guard with knownQueueGuard 0 or overload.refuse: rcpt, and steers nothing with the known queue off', () => {
    expect(world({ knownQueueGuard: 0 }).steering.steering()).toMatchObject({ refuseOthers: false, surgeAt: null });
    const rcpt = world({ overload: { refuse: 'rcpt' } });
    expect(rcpt.steering.steering()).toMatchObject({ surgeAt: null });
    rcpt.state.level = 'overload';
    expect(rcpt.steering.steering()).toMatchObject({ refuseOthers: false, surgeAt: null });
    expect(world({ knownQueue: false }).steering.steering()).toMatchObject({ networks: [], refuseOthers: false, surgeAt: null });
  });

  it('takes a guard\'s surge in before it steers, and steers again when the level or the drain changes, not otherwise', () => {
    const { state, steering, steered, surges, surged } = world();
    steering.refresh();
    expect(steered).toHaveLength(1);
    steering.refresh();
    expect(steered).toHaveLength(1);
    surges.push({ waiting: 130 });
    // The surge is taken in (overload) before the steering is worked out in the same refresh.
    steering.refresh();
    expect(surged).toEqual([['mx', 130, 16]]);
    expect(steered).toHaveLength(2);
    expect(steered.at(-1)).toMatchObject({ refuseOthers: true, surgeAt: null });
    state.draining = true;
    steering.refresh();
    expect(steered).toHaveLength(3);
    expect(steered.at(-1)).toMatchObject({ refusal: DRAINING });
  });

  it('raises the guard\'s threshold to what the normal connection rate brings in a quarter second, in steps of 16, up to 8 × the setting, and steers again only when it moves more than a step', () => {
    const { state, steering, steered, surges, surged } = world({ knownQueueGuard: 20 });
    // No connections yet: the setting.
    expect(steering.steering().surgeAt).toBe(20);
    state.rate = 60; // 15 in a quarter second: below the setting
    expect(steering.steering().surgeAt).toBe(20);
    state.rate = 400; // 100 → 112
    steering.refresh();
    expect(steered.at(-1)?.surgeAt).toBe(112);
    state.rate = 460; // 115 → 128: one step from the one in force, no new steering
    steering.refresh();
    expect(steered).toHaveLength(1);
    state.rate = 540; // 135 → 144: two steps
    steering.refresh();
    expect(steered).toHaveLength(2);
    expect(steered.at(-1)?.surgeAt).toBe(144);
    // A surge is logged with the threshold that was in force.
    surges.push({ waiting: 150 });
    steering.refresh();
    expect(surged).toEqual([['mx', 150, 144]]);
    // Under overload no guard is armed: a change of the rate steers nothing new.
    const steps = steered.length;
    state.rate = 60;
    steering.refresh();
    expect(steered).toHaveLength(steps);
    // However fast the normal rate: 8 × the setting at most.
    const fast = world({ knownQueueGuard: 20 });
    fast.state.rate = 5000;
    fast.steering.refresh();
    expect(fast.steered.at(-1)?.surgeAt).toBe(160);
  });
});
