/*
 * The admission of one node: the listeners ask it at each connection, MAIL FROM and RCPT; it
 * answers from the known senders, the pressure level and what it counts itself, and it counts
 * every decision by reason.
 *
 * Takes: the config's `admission` section (and the listeners, for which ones it guards: the
 *   admission listeners, default every mx listener), the known senders (a client address's and an
 *   AUTH user's standing), the pressure (level, intake) and a counter of decisions.
 * Gives: the door's decision at connect (greeting delay or refusal), the refusals at MAIL FROM and
 *   RCPT (admission-decide.ts says which), each session's scan priority (known senders' messages
 *   take the scan slots reserved for them), and the scan slots themselves. Submission and proxy
 *   listeners are not guarded at the door (their senders authenticate), but their sessions still
 *   get their scan priority and the intake pause.
 * Memory: one entry per open session, one count per network with open sessions, and one list of
 *   MAIL FROM times per network seen in the last minute (RecentEvents: bounded, swept).
 * Settings: admission.* (reloaded with the config).
 */
import type { Logger } from 'pino';
import type { SmtpReply } from '../../base/base-reply.js';
import { ScanSlots, type ScanPriority, type SlotObserver } from '../../queue/accept/accept-slots.js';
import type { Config, ListenerConfig } from '../mta-config-schema.js';
import { clientKey, RecentEvents } from '../ingress/ingress-anvil.js';
import { NormalRate } from './admission-rate.js';
import { decideDoor, decideMail, decideRcpt, isKnown, type DoorDecision, type Level, type Standing } from './admission-decide.js';

export type { DoorDecision } from './admission-decide.js';

export type { Level, Standing } from './admission-decide.js';

/** Where a decision was made. */
export type DecisionPoint = 'connect' | 'mail' | 'rcpt' | 'data' | 'auth';

/** The known senders, as the door asks them. */
export interface SenderStandings {
  standing(address: string): Standing;
  standingOf(kind: 'user', key: string): Standing;
}

/** The pressure, as the door reads it. */
export interface PressureReading {
  readonly level: Level;
  intake(): 'open' | 'paused';
}

export interface AdmissionDeps {
  senders: SenderStandings;
  pressure: PressureReading;
  /** Counts a decision (the metrics), `n` times when given. */
  count(point: DecisionPoint, action: 'greet' | 'delay' | 'refuse' | 'go', reason: string, n?: number): void;
  /** Hears each scan slot wait and scan (the pressure's scan signals). */
  slots?: SlotObserver;
  log: Logger;
  /** The clock of the connection rate (tests replace it). */
  now?: () => number;
}

interface SessionEntry {
  listener: string;
  address: string;
  network: string;
  standing: Standing;
  guarded: boolean;
}

const MINUTE = 60_000;

export class Admission {
  readonly slots: ScanSlots;
  #config: Config;
  #guarded = new Set<string>();
  readonly #sessions = new Map<string, SessionEntry>();
  readonly #networkOpen = new Map<string, number>();
  readonly #mails = new RecentEvents();
  /**
   * Connections the door refused for pressure or the reserve since `takeTurnedAway` was last
   * called, per network, each network counted up to busy.maxConnections: one client reconnecting
   * in a loop cannot hold the level up by itself.
   */
  readonly #turnedAway = new Map<string, number>();
  /** Connections to the guarded listeners, refused ones too, against their normal rate (the connections signal). */
  readonly #connections: NormalRate;

  constructor(config: Config, private readonly deps: AdmissionDeps) {
    this.#config = config;
    this.#connections = new NormalRate(deps.now, config.admission.pressure.learnAfter);
    this.slots = new ScanSlots(config.admission.scans, config.admission.reserve.scans, deps.slots);
    this.apply(config);
  }

  apply(config: Config): void {
    this.#config = config;
    const named = config.admission.listeners;
    this.#guarded = new Set(config.listeners.filter((l) => (named ? named.includes(l.name) : l.role === 'mx')).map((l) => l.name));
    // Only admission `on` treats unknown senders differently; observe and off leave every slot to everyone.
    const on = config.admission.mode === 'on';
    this.slots.resize(config.admission.scans, on ? config.admission.reserve.scans : 0, on ? config.admission.unknownScans : undefined);
  }

  /**
   * Connections the door never saw: refused at the socket by the kernel's steering under overload
   * (ingress/ingress-known-queue.ts). They count as the door's refusals would: in the decisions and
   * in the connection rate, which holds the level up while the flood goes on.
   */
  refusedAtSocket(n: number): void {
    if (n <= 0) return;
    this.#connections.hit(n);
    this.deps.count('connect', 'refuse', 'overload', n);
  }

  /** The same since the last call (the surge check's short span; rate.recentRatio). */
  connectionSurgeRatio(): number | null {
    return this.#connections.recentRatio();
  }

  /**
   * The normal rate of connections to the guarded listeners, a second; while that is still being
   * learned (after a start), their rate over the last ten seconds.
   */
  normalConnectionRate(): number {
    return this.#connections.normal() ?? this.#connections.current();
  }

  /** Connections per second to the guarded listeners against their normal rate; null while it is still being learned. */
  connectionRatio(): number | null {
    return this.#connections.ratio();
  }

  /** Whether the door decides on this listener's connections. */
  guards(listener: ListenerConfig): boolean {
    return this.#guarded.has(listener.name);
  }

  #network(address: string): string {
    const s = this.#config.admission.senders;
    return clientKey(address, s.ipv6Prefix, s.ipv4Prefix);
  }

  /**
   * A new connection, before its greeting: the decision for it (a guarded listener) or a plain
   * greeting. `open` counts the listener's sessions without this one. The session is followed
   * until `closed`, whatever the decision.
   */
  connect(id: string, address: string, listener: ListenerConfig, open: number): DoorDecision {
    const network = this.#network(address);
    const standing = this.deps.senders.standing(address);
    const guarded = this.guards(listener);
    const entry: SessionEntry = { listener: listener.name, address, network, standing, guarded };
    this.#sessions.set(id, entry);
    this.#networkOpen.set(network, (this.#networkOpen.get(network) ?? 0) + 1);
    if (!guarded) return { action: 'greet', delayMs: 0, reason: 'not_guarded', deferRcpt: false };
    this.#connections.hit();
    const decision = decideDoor({
      level: this.deps.pressure.level, standing, open, limit: listener.maxClients,
      networkOpen: (this.#networkOpen.get(network) ?? 1) - 1,
    }, this.#config.admission);
    const action = decision.action === 'refuse' ? 'refuse' : decision.delayMs > 0 ? 'delay' : 'greet';
    this.deps.count('connect', action, decision.reason);
    if (decision.action === 'refuse') {
      if (decision.reason !== 'blocked') this.#turnedAway.set(network, (this.#turnedAway.get(network) ?? 0) + 1);
      // A flood's refusals are counted (ichidan_admission_decisions_total), and logged at debug only.
      this.deps.log[decision.reason === 'blocked' ? 'info' : 'debug']({ listener: listener.name, client: address, standing, level: this.deps.pressure.level, reason: decision.reason }, 'connection refused by admission');
    }
    return decision;
  }

  /** The session authenticated: a known user's session is a known sender from now on. */
  authenticated(id: string, user: string): void {
    const entry = this.#sessions.get(id);
    if (!entry || isKnown(entry.standing)) return;
    const byUser = this.deps.senders.standingOf('user', user);
    if (isKnown(byUser)) {
      entry.standing = byUser;
      this.deps.count('auth', 'go', 'known_user');
    }
  }

  /** At MAIL FROM: null to go on, else the refusal (the intake pause applies on every listener). */
  mail(id: string): SmtpReply | null {
    const entry = this.#sessions.get(id);
    if (!entry) return null;
    const level = this.deps.pressure.level;
    const networkMails = entry.guarded && !isKnown(entry.standing) ? this.#mails.add(entry.network, MINUTE) : 0;
    const d = decideMail({ level: entry.guarded ? level : 'normal', standing: entry.standing, intake: this.deps.pressure.intake(), networkMails }, this.#config.admission);
    if (!d) return null;
    this.deps.count('mail', d.reply ? 'refuse' : 'go', d.reason);
    if (d.reply) this.deps.log.info({ listener: entry.listener, client: entry.address, standing: entry.standing, level, reason: d.reason }, 'transaction deferred by admission');
    return d.reply;
  }

  /** At RCPT: null to go on, else the 451. */
  rcpt(id: string): SmtpReply | null {
    return this.#overloadDeferral(id, 'rcpt');
  }

  /**
   * A message's body is in, before its scan (again after a wait for a scan slot): reply null to go
   * on, else the 451 — an unknown sender's message under overload (its RCPT came before the level
   * rose), so that the engines' time goes to known senders' mail. `counted`: a decision was already
   * counted for this message at an earlier look, so a second `go` is not counted again.
   */
  beforeScan(id: string, counted = false): { reply: SmtpReply | null; counted: boolean } {
    const d = this.#overloadDecision(id);
    if (d && (d.reply || !counted)) this.deps.count('data', d.reply ? 'refuse' : 'go', d.reason);
    return { reply: d?.reply ?? null, counted: counted || d !== null };
  }

  /** The overload's 451 for an unknown sender's session at RCPT, counted there (null: go on). */
  #overloadDeferral(id: string, point: 'rcpt'): SmtpReply | null {
    const d = this.#overloadDecision(id);
    if (!d) return null;
    this.deps.count(point, d.reply ? 'refuse' : 'go', d.reason);
    return d.reply;
  }

  #overloadDecision(id: string): { reply: SmtpReply | null; reason: string } | null {
    const entry = this.#sessions.get(id);
    if (!entry?.guarded) return null;
    return decideRcpt({ level: this.deps.pressure.level, standing: entry.standing }, this.#config.admission);
  }

  /** The scan priority of this session's messages. */
  priority(id: string): ScanPriority {
    const entry = this.#sessions.get(id);
    return entry && isKnown(entry.standing) ? 'known' : 'unknown';
  }

  /** What the admission knows of a session, for the learning that follows its messages. */
  session(id: string): { address: string; standing: Standing } | null {
    const entry = this.#sessions.get(id);
    return entry ? { address: entry.address, standing: entry.standing } : null;
  }

  closed(id: string): void {
    const entry = this.#sessions.get(id);
    if (!entry) return;
    this.#sessions.delete(id);
    const open = (this.#networkOpen.get(entry.network) ?? 1) - 1;
    if (open > 0) this.#networkOpen.set(entry.network, open);
    else this.#networkOpen.delete(entry.network);
  }

  /**
   * How many connections the door turned away (pressure, reserve) since the last call: part of the
   * demand the sessions signal reads. `peek`: counted, not cleared (a reading between two full ones).
   */
  takeTurnedAway(peek = false): number {
    const cap = this.#config.admission.busy.maxConnections;
    let n = 0;
    for (const count of this.#turnedAway.values()) n += Math.min(count, cap);
    if (!peek) this.#turnedAway.clear();
    return n;
  }

  /** Sessions followed now (tests, status). */
  get sessions(): number {
    return this.#sessions.size;
  }
}
