/*
 * The registry: every adapter, keyed by the config `type` that selects it.
 *
 * An adapter folder exports one definition — its type, its kind, its options schema and its
 * factory. Adding an engine type is one line here.
 */
import type { z } from 'zod';
import { mailauthDefinition } from './auth/auth.js';
import { clamdDefinition } from './clamd/clamd.js';
import type { Engine, EngineDeps, EngineKind } from './engine.js';
import { icapDefinition } from './icap/icap.js';
import { policyDefinition } from './policy/policy.js';
import { rspamdDefinition } from './rspamd/rspamd.js';
import { spamdDefinition } from './spamd/spamd.js';

export interface EngineDefinition<S extends z.ZodType = z.ZodType> {
  type: string;
  kind: EngineKind;
  /**
   * The engine works in this process on the message alone (no daemon, no network): its deadline
   * passing is the message's doing (too many parts, a huge encoded body), so the runner judges
   * the message unscannable and its breaker does not count the run.
   */
  local?: boolean;
  schema: S;
  create(options: z.output<S>, deps: EngineDeps): Engine;
}

export const ENGINE_DEFINITIONS = [
  clamdDefinition,
  icapDefinition,
  mailauthDefinition,
  policyDefinition,
  rspamdDefinition,
  spamdDefinition,
] as const;

export function definitionOf(type: string): EngineDefinition {
  const def = ENGINE_DEFINITIONS.find((d) => d.type === type);
  if (!def) throw new Error(`no engine type "${type}"`);
  return def as unknown as EngineDefinition;
}
