/*
 * mta/ — the process: configuration, SMTP listeners, relay policy, tenants; the composition root.
 *
 * Takes: one validated config snapshot (mta-config.ts).
 * Gives: listeners that accept mail into `queue/` (after `engines/` had their say), a queue that
 *   delivers through `delivery/`, and a graceful stop: stop accepting, finish the open
 *   transactions, close the queue.
 * Network: the listeners (MX and submission, on loopback in the default), DNS only to
 *   `dns.servers`.
 * RFCs: 5321 (SMTP), 3207 (STARTTLS), 4954 (AUTH), 1870 (SIZE), 2920 (PIPELINING), 6152
 *   (8BITMIME), 6531 (SMTPUTF8), 2034/3463 (enhanced status codes), 3461 (DSN parameters).
 * Settings: all of them; see README "Configuration".
 */
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import type { Logger } from 'pino';
import { buildEngineSet } from '../engines/index.js';
import { createResolver, reverseLookup } from '../delivery/delivery-route.js';
import { Egress, SessionCache } from '../delivery/index.js';
import { Queue } from '../queue/index.js';
import type { Config } from './mta-config-schema.js';
import { ConfigHandle } from './mta-config.js';
import { Policy } from './mta-policy.js';
import { AdminServer } from './mta-admin.js';
import { Listener, type Runtime } from './mta-server.js';
import { loadTlsMaterial } from './mta-tls.js';

export interface BoundListener {
  name: string;
  role: 'mx' | 'submission';
  address: string;
  port: number;
}

function buildRuntime(generation: number, config: Config, log: Logger): Runtime {
  const resolver = createResolver(config);
  return {
    generation,
    config,
    policy: new Policy(config),
    engines: buildEngineSet(config, { hostname: config.hostname, resolver, log }),
    reverse: resolver && config.dns.reverseLookup ? reverseLookup(resolver) : null,
  };
}

export function adminSocket(config: Config): string {
  return config.admin.socket ?? join(config.dataDir, 'admin.sock');
}

export class Ichidan {
  readonly #handle: ConfigHandle;
  #runtime: Runtime;
  readonly #listeners: Listener[] = [];
  #admin: AdminServer | null = null;
  bound: BoundListener[] = [];

  private constructor(config: Config, readonly queue: Queue, readonly log: Logger, private readonly sessions: SessionCache) {
    this.#handle = new ConfigHandle(config);
    this.#runtime = buildRuntime(1, config, log);
  }

  get config(): Config {
    return this.#runtime.config;
  }

  static async start(config: Config, log: Logger): Promise<Ichidan> {
    await mkdir(config.dataDir, { recursive: true });
    const sessions = new SessionCache();
    const { queue, report } = await Queue.open(config, new Egress(config, sessions), log);
    const app = new Ichidan(config, queue, log, sessions);
    log.info({ active: report.active, cleaned: report.cleaned, corrupt: report.corrupt.length }, 'queue reconciled');
    app.#admin = await AdminServer.listen(adminSocket(config), queue, log);
    const tls = await loadTlsMaterial(config);
    for (const spec of config.listeners) {
      const listener = new Listener(spec, { runtime: () => app.#runtime, queue, tls, log });
      const where = await listener.listen();
      app.#listeners.push(listener);
      app.bound.push({ name: spec.name, role: spec.role, ...where });
      log.info({ listener: spec.name, role: spec.role, ...where, tls: spec.tls }, 'listening');
    }
    return app;
  }

  listener(name: string): BoundListener {
    const l = this.bound.find((b) => b.name === name);
    if (!l) throw new Error(`no listener named ${name}`);
    return l;
  }

  /** Publishes a new config snapshot; transactions already open keep theirs. */
  reconfigure(config: Config): void {
    const snap = this.#handle.publish(config);
    const previous = this.#runtime;
    this.#runtime = buildRuntime(snap.generation, config, this.log);
    // Transactions that borrowed the previous snapshot may still be scanning with its engines.
    setTimeout(() => void previous.engines.close(), previous.config.limits.dataTimeout).unref();
    this.queue.reconfigure(config, new Egress(config, this.sessions));
  }

  /** Graceful stop: stop accepting, let open transactions finish, close the queue. */
  async stop(): Promise<void> {
    await Promise.all(this.#listeners.map((l) => l.close()));
    await this.#admin?.close();
    await this.queue.close();
    await this.#runtime.engines.close();
    this.sessions.closeAll();
  }
}

export { loadConfig, parseConfig, ConfigError } from './mta-config.js';
export type { Config } from './mta-config-schema.js';
