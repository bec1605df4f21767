/*
 * Known senders' own accept queue, for the daemon (the sockets: ingress/ingress-known-queue.ts;
 * the kernel's program: admission/admission-known-filter.ts): which listeners get one, which
 * networks it takes, and keeping the kernel's program in step with them.
 *
 * Takes: the config in force (admission.mode and admission.knownQueue, trustedNetworks, the
 *   tenants' networks), the known senders, and the listeners that took a known queue.
 * Gives: `forListener(spec)` — what a listener needs to open one, or null: not an admission
 *   listener, admission.mode not `on` at start, admission.knownQueue false, a listener behind a
 *   load balancer (proxyProtocol: every connection comes from the balancer), a worker of
 *   `ichidan start --workers` (its primary owns the listening sockets), or the addon unusable
 *   (said once at warn level); `refresh()`, checked every second and at each change of level,
 *   which gives each listener the steering again when it may have changed: trusted networks,
 *   tenants' networks, then pinned and known senders' networks (the most recently seen first, as
 *   many as the kernel's program holds) to the known queue, blocked networks to the general one,
 *   and under overload (admission.overload.refuse: connect) everyone else to the refusing thread
 *   (answered with the door's 421 4.7.0, or its 421 4.3.2 while the node drains)
 *   — below overload, the thread's guard does that itself once the general queue holds
 *   admission.knownQueueGuard connections (or what the normal connection rate brings in a quarter
 *   of a second, where that is more, up to eight times the setting); the refresh takes such a surge in first, as the
 *   pressure's own (overload at once); and tells the admission
 *   how many connections those threads answered (its decisions and its connection rate count them). With admission.mode no longer `on` after a reload, or knownQueue
 *   turned off, no network is steered and nobody refused: everyone shares the general queue.
 */
import cluster from 'node:cluster';
import type { Logger } from 'pino';
import { REPLIES, replyLine } from '../base/base-reply.js';
import type { KnownSenders } from './admission/admission-senders.js';
import type { Admission, Level } from './admission/admission.js';
import { loadReuseport, type ReuseportAddon, type Steering } from './ingress/ingress-known-queue.js';
import type { Listener, ListenerDeps } from './ingress/ingress-server.js';
import type { Config, ListenerConfig } from './mta-config-schema.js';

const EVERY_MS = 1000;
/**
 * The guard never fires on fewer connections than the normal rate (the last ten seconds' while it
 * is being learned) brings in this long: a busy node's event loop may stall that long without a
 * flood (its own threshold is the floor).
 */
const GUARD_NORMAL_S = 0.25;
/**
 * The threshold moves in steps of this many connections, and only when the rate asks for more than
 * a step away from the one in force, so that a slowly learned rate does not re-steer every second.
 */
const GUARD_STEP = 16;
/** Nor does it go past this multiple of the setting: a sender ramping up slowly cannot raise it without bound. */
const GUARD_MAX_FACTOR = 8;
/** How often the guards' surges are looked for (a native counter each: cheap). */
const SURGES_EVERY_MS = 100;

export class KnownQueueSteering {
  #addon: ReuseportAddon | { error: string } | null = null;
  #timer: NodeJS.Timeout | null = null;
  #surgeTimer: NodeJS.Timeout | null = null;
  /** What the listeners were last steered from. */
  #last: { changes: number; level: Level; draining: boolean; config: Config; guard: number } | null = null;
  /** The guard's threshold in the steering last given (null before any). */
  #guard: number | null = null;
  /** Connections each listener's refusing thread had answered at the last look. */
  readonly #refused = new Map<string, number>();

  constructor(
    private readonly config: () => Config,
    private readonly senders: () => KnownSenders | null,
    private readonly admission: Admission,
    private readonly level: () => Level,
    private readonly draining: () => boolean,
    private readonly listeners: () => readonly Listener[],
    private readonly log: Logger,
    /** A flood the guard met at a listener's socket, with the general queue's length then and the guard's threshold: the pressure's surge. */
    private readonly surged: (listener: string, waiting: number, at: number) => void,
  ) {}

  forListener(spec: ListenerConfig): ListenerDeps['knownQueue'] {
    const config = this.config();
    // Behind a load balancer every connection comes from its address: there is nothing to steer by.
    if (config.admission.mode !== 'on' || !config.admission.knownQueue || !this.admission.guards(spec) || cluster.isWorker || spec.proxyProtocol) return null;
    if (this.#addon === null) {
      this.#addon = loadReuseport();
      if ('error' in this.#addon) this.log.warn({ reason: this.#addon.error }, 'known senders share the accept queue with everyone');
    }
    if ('error' in this.#addon) return null;
    return { addon: this.#addon, steering: () => this.steering() };
  }

  /** What the kernel is to do now: the known networks (the ones that matter most first), the blocked ones, whether to refuse everyone else. */
  steering(): Steering {
    const config = this.config();
    // The door's refusal: a draining node's (4.3.2) while it drains, else the overload's.
    const refusal = replyLine(this.draining() ? REPLIES.draining : REPLIES.overloaded);
    if (config.admission.mode !== 'on' || !config.admission.knownQueue) return { networks: [], blocked: [], refuseOthers: false, surgeAt: null, refusal };
    const tenants = Object.values(config.tenants).flatMap((t) => t.networks);
    const senders = this.senders()?.steeredNetworks() ?? { known: [], blocked: [] };
    const level = this.level();
    return {
      networks: [...config.trustedNetworks, ...tenants, ...senders.known],
      blocked: senders.blocked,
      refuseOthers: level === 'overload' && config.admission.overload.refuse === 'connect',
      surgeAt: guardArmed(config, level) ? this.#guard ?? this.guardThreshold() : null,
      refusal,
    };
  }

  /**
   * Connections waiting in the general queue at which the guard fires: admission.knownQueueGuard,
   * or what the normal connection rate brings in GUARD_NORMAL_S where that is more (in steps, up
   * to GUARD_MAX_FACTOR times the setting); the one in force while the rate asks for less than
   * two steps' change.
   */
  guardThreshold(): number {
    const floor = this.config().admission.knownQueueGuard;
    const normal = this.admission.normalConnectionRate();
    const ceiling = floor * GUARD_MAX_FACTOR;
    const wanted = Math.min(ceiling, Math.max(floor, Math.ceil((normal * GUARD_NORMAL_S) / GUARD_STEP) * GUARD_STEP));
    // The one in force stays while it is within the (possibly reloaded) bounds and a step of the wanted one.
    const inForce = this.#guard;
    const keep = inForce !== null && inForce >= floor && inForce <= ceiling && Math.abs(wanted - inForce) <= GUARD_STEP;
    return keep ? inForce : wanted;
  }

  start(): void {
    this.#timer = setInterval(() => this.refresh(), EVERY_MS);
    this.#timer.unref();
    // A surge the guard met is taken in well before the next refresh: the level, its log and metrics.
    // Only the guards' counters are read here; the steering follows when one was taken in.
    this.#surgeTimer = setInterval(() => {
      if (this.#takeSurges()) this.refresh();
    }, SURGES_EVERY_MS);
    this.#surgeTimer.unref();
  }

  stop(): void {
    if (this.#timer) clearInterval(this.#timer);
    if (this.#surgeTimer) clearInterval(this.#surgeTimer);
    this.#timer = this.#surgeTimer = null;
  }

  /**
   * Gives the listeners the steering again if a known or blocked network, the config or the level
   * may have changed since the last time; and tells the admission what the refusing threads
   * answered meanwhile.
   */
  refresh(): void {
    this.#countRefused();
    this.#takeSurges();
    // What the steering is made from: the senders' steered networks, the level, draining, the
    // config (a reload gives a new object).
    // The guard's threshold counts only while a guard is armed.
    const guard = this.guardThreshold();
    const now = { changes: this.senders()?.steeredNetworksChanges ?? 0, level: this.level(), draining: this.draining(), config: this.config(), guard };
    const last = this.#last;
    if (last && now.changes === last.changes && now.level === last.level && now.draining === last.draining && now.config === last.config
      && (now.guard === last.guard || !guardArmed(now.config, now.level))) return;
    this.#last = now;
    this.#guard = guard;
    const steering = this.steering();
    for (const l of this.listeners()) l.steerKnown(steering);
  }

  /** Surges the guards met since the last look, taken in before the next steering replaces their program; whether there was one. */
  #takeSurges(): boolean {
    let taken = false;
    for (const l of this.listeners()) {
      const surge = l.takeSurge();
      if (!surge) continue;
      taken = true;
      this.surged(l.spec.name, surge.waiting, this.#guard ?? this.guardThreshold());
    }
    return taken;
  }

  #countRefused(): void {
    for (const l of this.listeners()) {
      const status = l.knownQueue();
      if (!status) continue;
      const before = this.#refused.get(l.spec.name) ?? 0;
      this.#refused.set(l.spec.name, status.refused);
      this.admission.refusedAtSocket(status.refused - before);
    }
  }
}

/** Whether the guard is armed: below overload, refusing at connect, with a threshold set. */
function guardArmed(config: Config, level: Level): boolean {
  return level !== 'overload' && config.admission.overload.refuse === 'connect' && config.admission.knownQueueGuard > 0;
}
