/*
 * The config snapshot the process runs on: a validated config with what is built from it (the
 * relay policy, the engine set, the reverse resolver, the DKIM keys), published as a whole by the composition
 * (mta-daemon.ts) at start and at every reload, never changed in place.
 *
 * Each SMTP transaction takes a use of the snapshot current at its MAIL FROM and keeps it to its
 * end, the accept step holds one while it scans (and shadow engines until they end); the engines
 * only this snapshot named are closed when its last use is given back.
 */
import type { ScanSnapshot } from '../queue/accept/accept-step.js';
import type { Config } from './mta-config-schema.js';
import type { Policy } from './ingress/ingress-policy.js';
import type { DkimKeys } from '../queue/accept/accept-dkim-keys.js';

export interface Snapshot extends ScanSnapshot {
  generation: number;
  config: Config;
  policy: Policy;
  reverse: ((ip: string) => Promise<string[]>) | null;
  /** The tenants' DKIM keys, read when the snapshot was built (a reload picks up rotated key files). */
  dkim: DkimKeys;
  /** A use taken (a transaction at MAIL FROM, a scan) and given back when it ends (engines drain on it). */
  retain(): void;
  release(): void;
}
