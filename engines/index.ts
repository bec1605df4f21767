/*
 * engines/ — scanning the accepted bytes before the reply to DATA.
 *
 * Takes: the spool file DATA just wrote (read back from the page cache, never copied) and the
 *   transaction's context (client, HELO, sender, recipients, tenants, queue id).
 * Gives: one decision for the message — accept (with the headers to add in front of the body),
 *   tag, quarantine (accepted and held), reject (550 5.7.1; 550 5.6.0 for structure past `limits`;
 *   no bounce is ever sent for it) or tempfail (451 4.7.1) — and a report of every engine's run for
 *   the records and statistics.
 * Network: the engines' own daemons (clamd, spamd, rspamd, ICAP servers) at the addresses the
 *   config gives; DNS for sender authentication only through `dns.servers`.
 * RFCs: 3507 (ICAP), 7208 (SPF), 6376 (DKIM), 7489 (DMARC), 8617 (ARC), 8601
 *   (Authentication-Results).
 * Settings: `engines` (the list, each with a `type` from the registry), `scanning` (the verdict
 *   policy; `scanning.unscannable` also for structure past `limits`), `tenants.NAME.scanning` (a
 *   tenant's engines and overrides).
 */
import type { EnginesConfig } from './engines-config.js';
import { spoolMessage, type EngineDeps, type ScanContext, type ScanMessage } from './engine.js';
import { EngineHost, type EngineEvent, type EngineInfo, type OperatorSwitch } from './engines-host.js';
import { EngineRunner, type ScanDecision } from './engines-run.js';
import { oversizeWarnings } from './engines-config.js';

export type { ScanContext, ScanMessage, ScanDecision, EngineEvent, EngineInfo, OperatorSwitch };
export { spoolMessage, EngineHost, oversizeWarnings };

export interface EngineSet {
  readonly size: number;
  /** The engines' names, in config order. */
  readonly names: string[];
  /**
   * Runs the engines (none, when none are configured) and decides; `structure` is what the
   * structure check of DATA found past `limits` (null: nothing), judged even without engines.
   */
  scan(message: ScanMessage, context: ScanContext, signal: AbortSignal, structure?: string | null): Promise<ScanDecision>;
  /** The snapshot that held this set is no longer used: engines no other snapshot uses are closed. */
  release(): void;
}

/** The engine set of one config snapshot, from the host's live instances. */
export function buildEngineSet(config: EnginesConfig, host: EngineHost, deps: EngineDeps): EngineSet {
  // Always through the host, with no engines too: it must learn that the previous ones are gone.
  const held = host.snapshot(config.engines, deps, JSON.stringify({ hostname: config.hostname, dns: config.dns }));
  const tenants = Object.fromEntries(Object.entries(config.tenants).map(([name, t]) => [name, t.scanning]));
  const runner = new EngineRunner(held.entries, config.scanning, tenants);
  return {
    size: held.entries.length,
    names: held.entries.map((e) => e.options.name),
    scan: (message, context, signal, structure) => runner.scan(message, context, signal, structure ?? null),
    release: () => held.release(),
  };
}
