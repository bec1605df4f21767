/*
 * Known senders' own accept queue, for the daemon (the sockets: ingress/ingress-known-queue.ts;
 * the kernel's program: admission/admission-known-filter.ts): which listeners get one, which
 * networks it takes, and keeping the kernel's program in step with them.
 *
 * Takes: the config in force (admission.mode and admission.knownQueue, trustedNetworks, the
 *   tenants' networks), the known senders, and the listeners that took a known queue.
 * Gives: `forListener(spec)` — what a listener needs to open one, or null: not an admission
 *   listener, admission.mode not `on` at start, admission.knownQueue false, a worker of
 *   `ichidan start --workers` (its primary owns the listening sockets), or the addon unusable
 *   (said once at warn level); `refresh()`, which gives each listener the networks again when
 *   they may have changed, checked every second: trusted networks, tenants' networks, then
 *   pinned and known senders' networks (the most recently seen first, as many as the kernel's
 *   program holds). With admission.mode no longer `on` after a reload, or knownQueue turned off,
 *   the queue takes no network: everyone shares the general one.
 */
import cluster from 'node:cluster';
import type { Logger } from 'pino';
import type { KnownSenders } from './admission/admission-senders.js';
import type { Admission } from './admission/admission.js';
import { loadReuseport, type ReuseportAddon } from './ingress/ingress-known-queue.js';
import type { Listener, ListenerDeps } from './ingress/ingress-server.js';
import type { Config, ListenerConfig } from './mta-config-schema.js';

const EVERY_MS = 1000;

export class KnownQueueSteering {
  #addon: ReuseportAddon | { error: string } | null = null;
  #timer: NodeJS.Timeout | null = null;
  #lastChanges = -1;
  #lastConfig: Config | null = null;

  constructor(
    private readonly config: () => Config,
    private readonly senders: () => KnownSenders | null,
    private readonly admission: Admission,
    private readonly listeners: () => readonly Listener[],
    private readonly log: Logger,
  ) {}

  forListener(spec: ListenerConfig): ListenerDeps['knownQueue'] {
    const config = this.config();
    if (config.admission.mode !== 'on' || !config.admission.knownQueue || !this.admission.guards(spec) || cluster.isWorker) return null;
    if (this.#addon === null) {
      this.#addon = loadReuseport();
      if ('error' in this.#addon) this.log.warn({ reason: this.#addon.error }, 'known senders share the accept queue with everyone');
    }
    if ('error' in this.#addon) return null;
    return { addon: this.#addon, networks: () => this.networks() };
  }

  /** The networks the known queue takes now, the ones that matter most first. */
  networks(): string[] {
    const config = this.config();
    if (config.admission.mode !== 'on' || !config.admission.knownQueue) return [];
    const tenants = Object.values(config.tenants).flatMap((t) => t.networks);
    return [...config.trustedNetworks, ...tenants, ...(this.senders()?.knownNetworks() ?? [])];
  }

  start(): void {
    this.#timer = setInterval(() => this.refresh(), EVERY_MS);
    this.#timer.unref();
  }

  stop(): void {
    if (this.#timer) clearInterval(this.#timer);
    this.#timer = null;
  }

  /** Gives the listeners the networks again if a known network or the config may have changed since the last time. */
  refresh(): void {
    const changes = this.senders()?.knownNetworksChanges ?? 0;
    const config = this.config();
    if (changes === this.#lastChanges && config === this.#lastConfig) return;
    this.#lastChanges = changes;
    this.#lastConfig = config;
    const networks = this.networks();
    for (const l of this.listeners()) l.steerKnown(networks);
  }
}
