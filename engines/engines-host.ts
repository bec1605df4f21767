/*
 * The live engines across config reloads: which adapter instances exist, their breakers, the
 * operator's switches, and when a retired instance may be closed.
 *
 * Takes: each new config snapshot (`snapshot(config)`), operator actions (`disable`, `enable`),
 *   the switches persisted from an earlier run.
 * Gives: an `EngineSet` per snapshot. An engine whose settings did not change between two
 *   snapshots is the same instance (its breaker, version and connections carry over); a changed
 *   one is a new instance; a removed one stays usable by the snapshots that still name it.
 * Drain: every snapshot holds a use of each of its engines; a transaction holds its snapshot from
 *   MAIL FROM to its end (mta/ingress/ingress-server.ts). When the last snapshot naming an instance is released —
 *   so no transaction can still scan with it — the instance is closed.
 * Events: breaker transitions and switch changes go to `onEvent` (logged, counted and stored by
 *   the caller). An operator's switch made here also goes to `onOperatorSwitch` (a cluster shares
 *   it, mta/mta-shared.ts); one made on another node arrives through `applySwitch`.
 */
import { Breaker, type Admission, type BreakerState } from './engines-breaker.js';
import type { CommonOptions } from './engines-common.js';
import type { EngineConfig } from './engines-config.js';
import { definitionOf } from './engines-registry.js';
import type { Engine, EngineDeps, EngineResult } from './engine.js';
import type { EngineEntry, EngineHealth } from './engines-run.js';

export interface EngineEvent {
  at: number;
  engine: string;
  event: 'breaker' | 'disabled' | 'enabled' | 'added' | 'replaced' | 'removed' | 'closed';
  from?: BreakerState;
  to?: BreakerState;
  reason: string;
}

export interface OperatorSwitch {
  reason: string;
  at: number;
}

export interface EngineInfo {
  name: string;
  type: string;
  kind: string;
  shadow: boolean;
  /** 'disabled' when an operator switched it off; otherwise the breaker's state. */
  state: 'enabled' | 'disabled';
  breaker: BreakerState;
  disabledReason: string | null;
  lastError: string | null;
  version: string | null;
  scans: number;
  failures: number;
  skipped: number;
}

class Slot implements EngineHealth {
  users = 0;
  scans = 0;
  failures = 0;
  skipped = 0;
  readonly breaker: Breaker;

  constructor(readonly key: string, readonly type: string, readonly options: CommonOptions, readonly engine: Engine,
    private readonly switches: Map<string, OperatorSwitch>, onEvent: (e: EngineEvent) => void) {
    this.breaker = new Breaker(options.breaker, (t) => onEvent({ at: t.at, engine: options.name, event: 'breaker', from: t.from, to: t.to, reason: t.reason }));
  }

  admit(now: number): Admission {
    if (this.switches.has(this.options.name)) {
      this.skipped++;
      return 'skip';
    }
    const a = this.breaker.admit(now);
    if (a === 'skip') this.skipped++;
    return a;
  }

  record(admission: Admission, result: EngineResult, now: number): void {
    this.scans++;
    const o = result.outcome;
    // Only the engine's own failures count. What the message causes (too large for the engine,
    // unscannable) says nothing about the engine, and a sender must not be able to switch it off.
    const failure = o.status === 'error' && o.error !== 'too-large' ? `${o.error}: ${o.message}` : null;
    if (failure) this.failures++;
    this.breaker.record(admission, failure, now);
  }

  abandon(admission: Admission): void {
    this.breaker.abandon(admission);
  }

  entry(): EngineEntry {
    return { type: this.type, local: definitionOf(this.type).local ?? false, options: this.options, engine: this.engine, health: this };
  }
}

/** A snapshot's engines; `release()` once the snapshot is no longer used by any transaction. */
export interface HeldEngines {
  entries: EngineEntry[];
  release(): void;
}

export class EngineHost {
  /** The instances the newest snapshot uses, by engine name. */
  #current = new Map<string, Slot>();
  readonly #switches: Map<string, OperatorSwitch>;
  /** Told of each switch an operator makes on this node (null: enabled again). */
  onOperatorSwitch: (engine: string, off: OperatorSwitch | null) => void = () => undefined;

  constructor(switches: Map<string, OperatorSwitch>, private readonly onEvent: (e: EngineEvent) => void) {
    this.#switches = switches;
  }

  /**
   * The engines of a new config snapshot, reusing unchanged instances. `context` holds what else
   * an engine depends on (host name, resolvers): when it changes, every engine is rebuilt.
   */
  snapshot(configs: EngineConfig[], deps: EngineDeps, context = ''): HeldEngines {
    const next = new Map<string, Slot>();
    try {
      this.#fill(next, configs, deps, context);
    } catch (err) {
      // A factory failed: give back the uses taken so far and close what was built for nothing.
      for (const slot of next.values()) {
        if (--slot.users === 0 && this.#current.get(slot.options.name) !== slot) slot.engine.close().catch(() => undefined);
      }
      throw err;
    }
    for (const [name, slot] of this.#current) {
      if (!next.has(name)) this.onEvent({ at: Date.now(), engine: name, event: 'removed', reason: `draining (${slot.users} snapshot${slot.users === 1 ? '' : 's'} still use it)` });
    }
    this.#current = next;
    const slots = [...next.values()];
    let released = false;
    return {
      entries: slots.map((s) => s.entry()),
      release: () => {
        if (released) return;
        released = true;
        for (const s of slots) {
          if (--s.users > 0) continue;
          s.engine.close().catch(() => undefined);
          this.onEvent({ at: Date.now(), engine: s.options.name, event: 'closed', reason: 'no snapshot uses it any more' });
        }
      },
    };
  }

  #fill(next: Map<string, Slot>, configs: EngineConfig[], deps: EngineDeps, context: string): void {
    for (const options of configs) {
      const key = JSON.stringify(options) + context;
      const existing = this.#current.get(options.name);
      let slot: Slot;
      if (existing && existing.key === key) {
        slot = existing;
      } else {
        const engine = definitionOf(options.type).create(options, deps);
        slot = new Slot(key, options.type, options, engine, this.#switches, this.onEvent);
        this.onEvent({ at: Date.now(), engine: options.name, event: existing ? 'replaced' : 'added', reason: existing ? 'settings changed' : `type ${options.type}` });
      }
      slot.users++;
      next.set(options.name, slot);
    }
  }

  /** An operator's switch: the engine is skipped (counted as disabled) from the next scan on. */
  disable(name: string, reason: string): boolean {
    if (!this.#current.has(name)) return false;
    const sw = { reason, at: Date.now() };
    this.#switches.set(name, sw);
    this.onEvent({ at: sw.at, engine: name, event: 'disabled', reason });
    this.onOperatorSwitch(name, sw);
    return true;
  }

  enable(name: string): boolean {
    if (!this.#switches.has(name)) return false;
    this.#switches.delete(name);
    this.onEvent({ at: Date.now(), engine: name, event: 'enabled', reason: 'operator' });
    this.onOperatorSwitch(name, null);
    return true;
  }

  /**
   * A switch made elsewhere (another node of the cluster): kept even for an engine this node's
   * config does not name, so it applies if one is added. Returns whether anything changed.
   */
  applySwitch(name: string, off: OperatorSwitch | null, by: string): boolean {
    const current = this.#switches.get(name);
    if (off === null) {
      if (!current) return false;
      this.#switches.delete(name);
      this.onEvent({ at: Date.now(), engine: name, event: 'enabled', reason: by });
      return true;
    }
    if (current && current.reason === off.reason && current.at === off.at) return false;
    this.#switches.set(name, { ...off });
    this.onEvent({ at: off.at, engine: name, event: 'disabled', reason: off.reason });
    return true;
  }

  /** The switches in force, by engine name. */
  switches(): Map<string, OperatorSwitch> {
    return new Map(this.#switches);
  }

  list(): EngineInfo[] {
    return [...this.#current.values()].map((s) => ({
      name: s.options.name,
      type: s.type,
      kind: s.engine.kind,
      shadow: s.options.shadow,
      state: this.#switches.has(s.options.name) ? 'disabled' : 'enabled',
      breaker: s.breaker.state,
      disabledReason: this.#switches.get(s.options.name)?.reason ?? null,
      lastError: s.breaker.lastError,
      version: s.engine.version(),
      scans: s.scans,
      failures: s.failures,
      skipped: s.skipped,
    }));
  }
}
