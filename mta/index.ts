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
import { readFileSync, watch, type FSWatcher } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import type { Logger } from 'pino';
import { Counter, Gauge, Registry } from 'prom-client';
import { buildEngineSet, EngineHost, oversizeWarnings } from '../engines/index.js';
import { createResolver, reverseLookup } from '../delivery/delivery-route.js';
import { Egress, SessionCache, StsPolicyCache } from '../delivery/index.js';
import { Queue } from '../queue/index.js';
import type { Config } from './mta-config-schema.js';
import { ConfigError, ConfigHandle, loadConfig } from './mta-config.js';
import { Policy } from './mta-policy.js';
import { AdminServer } from './mta-admin.js';
import { AuthGuard } from './mta-auth.js';
import { PasswordVerifier } from './mta-auth-hash.js';
import { Listener, type Runtime } from './mta-server.js';
import { ProxyListener } from './proxy/proxy-listener.js';
import { loadOriginalDst, type OriginalDstReader } from './proxy/proxy-origdst.js';
import type { ProxyDeps } from './proxy/proxy-session.js';
import { RELAY_TENANT } from './mta-policy.js';
import { proxyScans, scanProxied } from './proxy/proxy-scan.js';
import { LineEndingGuard } from './mta-data.js';
import { loadTlsMaterial } from './mta-tls.js';
import { secureDataDir } from './mta-datadir.js';

export interface BoundListener {
  name: string;
  role: 'mx' | 'submission' | 'proxy';
  address: string;
  port: number;
}

function buildRuntime(generation: number, config: Config, host: EngineHost, log: Logger): Runtime {
  const resolver = createResolver(config);
  const engines = buildEngineSet(config, host, { hostname: config.hostname, resolver, log });
  // At start and at every reload: mail between an engine's maxSize and the largest accepted is not checked by it.
  for (const warning of oversizeWarnings(config.engines, config.limits.maxMessageSize)) log.warn({ setting: 'engines[].maxSize' }, warning);
  // One use belongs to Ichidan while this is the current snapshot; each transaction takes another.
  let uses = 1;
  return {
    generation,
    config,
    policy: new Policy(config),
    engines,
    reverse: resolver && config.dns.reverseLookup ? reverseLookup(resolver) : null,
    retain: () => { uses++; },
    release: () => {
      if (--uses === 0) engines.release();
    },
  };
}

export function adminSocket(config: Config): string {
  return config.admin.socket ?? join(config.dataDir, 'admin.sock');
}

/** Settings a reload cannot apply to a running process. */
const RESTART_KEYS = ['dataDir', 'listeners', 'tls', 'admin', 'queue.fsync', 'proxy.eventsFile', 'proxy.webhook', 'auth.workers', 'auth.queue'] as const;

function needsRestart(before: Config, after: Config): string[] {
  const get = (c: Config, key: string) => key.split('.').reduce<unknown>((o, k) => (o as Record<string, unknown>)?.[k], c);
  return RESTART_KEYS.filter((k) => JSON.stringify(get(before, k)) !== JSON.stringify(get(after, k)));
}

export type ReloadResult =
  | { ok: true; generation: number; needsRestart: string[] }
  | { ok: false; problems: string[] };

export class Ichidan {
  readonly #handle: ConfigHandle;
  #runtime: Runtime;
  readonly #listeners: Listener[] = [];
  readonly #proxies: ProxyListener[] = [];
  readonly #proxyOutbound = new Set<string>();
  #admin: AdminServer | null = null;
  #passwords: PasswordVerifier | null = null;
  #policies = new StsPolicyCache();
  readonly engines: EngineHost;
  readonly metrics = new Registry();
  bound: BoundListener[] = [];
  /** The file `reload()` reads by default (the one the process started from). */
  configFile: string | null = null;

  private constructor(config: Config, readonly queue: Queue, readonly log: Logger, private readonly sessions: SessionCache) {
    this.#handle = new ConfigHandle(config);
    const transitions = new Counter({
      name: 'ichidan_engine_events_total', help: 'Engine breaker transitions and operator switches', labelNames: ['engine', 'event', 'to'], registers: [this.metrics],
    });
    this.engines = new EngineHost(queue.store.engineSwitches(), (e) => {
      transitions.inc({ engine: e.engine, event: e.event, to: e.to ?? '' });
      const level = e.event === 'breaker' && e.to === 'open' ? 'warn' : 'info';
      log[level]({ engine: e.engine, event: e.event, from: e.from, to: e.to, reason: e.reason }, `engine ${e.event}${e.to ? ` ${e.from} → ${e.to}` : ''}`);
      queue.store.write([{ op: 'engineEvent', event: e }]).catch((err) => log.error({ err }, 'could not record an engine event'));
    });
    this.#runtime = buildRuntime(1, config, this.engines, log);
    const engines = this.engines;
    new Gauge({
      name: 'ichidan_engine_up', help: '1 when the engine is used (enabled, breaker not open)', labelNames: ['engine', 'breaker', 'state'], registers: [this.metrics],
      collect() {
        this.reset();
        for (const e of engines.list()) this.set({ engine: e.name, breaker: e.breaker, state: e.state }, e.state === 'enabled' && e.breaker !== 'open' ? 1 : 0);
      },
    });
    const scheduler = queue.scheduler;
    const egressEvents = new Counter({
      name: 'ichidan_egress_events_total', help: 'Throttle reactions and operator holds on the delivery side', labelNames: ['kind', 'actor'], registers: [this.metrics],
    });
    queue.control.onEvent = (e) => egressEvents.inc({ kind: e.kind, actor: e.actor });
    new Gauge({
      name: 'ichidan_deliveries_in_flight', help: 'Delivery attempts running now', registers: [this.metrics],
      collect() { this.set(scheduler.active); },
    });
    new Gauge({
      name: 'ichidan_deliveries_waiting', help: 'Delivery jobs due or scheduled, not running', registers: [this.metrics],
      collect() { this.set(scheduler.waiting); },
    });
    new Gauge({
      name: 'ichidan_egress_pair_window', help: 'Connections allowed now per (destination site, source address): the slow-start window', labelNames: ['site', 'source'], registers: [this.metrics],
      collect() {
        this.reset();
        for (const p of scheduler.pairs()) this.set({ site: p.site, source: p.source || 'default' }, p.window);
      },
    });
    new Gauge({
      name: 'ichidan_queue_free_bytes', help: 'Least free space on the spool\'s and the queue database\'s filesystems (new mail waits below queue.minFree)', registers: [this.metrics],
      collect() { if (Number.isFinite(queue.space.free)) this.set(queue.space.free); },
    });
    new Gauge({
      name: 'ichidan_queue_outcomes_uncommitted', help: 'Delivery outcomes held in memory because the queue database could not commit them yet', registers: [this.metrics],
      collect() { this.set(queue.pendingOutcomes.size); },
    });
    new Gauge({
      name: 'ichidan_egress_blocks', help: 'Holds, suspensions and pauses in force', registers: [this.metrics],
      collect() { this.set(scheduler.blocks().length); },
    });
  }

  get config(): Config {
    return this.#runtime.config;
  }

  get generation(): number {
    return this.#runtime.generation;
  }

  /**
   * `originalDst` stands in for the kernel's answer to where a proxied connection was going (on
   * a system without netfilter, or in a test on loopback); by default the native addon is asked.
   */
  static async start(config: Config, log: Logger, opts: { configFile?: string; originalDst?: OriginalDstReader } = {}): Promise<Ichidan> {
    await secureDataDir(config.dataDir, log);
    const sessions = new SessionCache();
    // One MTA-STS policy cache for the life of the process: a reload keeps the policies learnt.
    const policies = new StsPolicyCache();
    const { queue, report } = await Queue.open(config, new Egress(config, sessions, { policies, log }), log);
    const app = new Ichidan(config, queue, log, sessions);
    app.#policies = policies;
    app.configFile = opts.configFile ?? null;
    log.info({ active: report.active, cleaned: report.cleaned, corrupt: report.corrupt.length }, 'queue reconciled');
    app.#admin = await AdminServer.listen(adminSocket(config), app, log);
    if (config.admin.watchConfig && app.configFile) app.#watch(app.configFile);
    const tls = await loadTlsMaterial(config);
    const passwords = app.#passwords = new PasswordVerifier(config.auth);
    const auth = new AuthGuard(passwords);
    for (const spec of config.listeners) {
      if (spec.role === 'proxy') {
        await app.#startProxy(spec, tls, opts.originalDst);
        continue;
      }
      const listener = new Listener(spec, { runtime: () => app.#runtime, queue, tls, log, auth });
      const where = await listener.listen();
      app.#listeners.push(listener);
      app.bound.push({ name: spec.name, role: spec.role, ...where });
      log.info({ listener: spec.name, role: spec.role, ...where, tls: spec.tls }, 'listening');
    }
    return app;
  }

  /** A proxy listener, when the kernel can say where its connections were going; else reported, and everything else runs. */
  async #startProxy(spec: Config['listeners'][number], tls: { key: string | Buffer; cert: string | Buffer }, given?: OriginalDstReader): Promise<void> {
    const reader = given ?? loadOriginalDst();
    if ('error' in reader) {
      this.log.error({ listener: spec.name, reason: reader.error }, 'proxy listener not started: the original destination of redirected connections cannot be read');
      return;
    }
    const proxy = new ProxyListener(spec, {
      config: () => this.config,
      policy: () => this.#runtime.policy,
      tenantOf: (address) => {
        const policy = this.#runtime.policy;
        return policy.tenantOfClient(address) ?? (policy.isTrusted(address) ? RELAY_TENANT : undefined);
      },
      session: (config) => this.#proxyDeps(config),
      scanner: (tenant) => {
        const runtime = this.#runtime;
        if (!proxyScans(runtime.config.proxy.scan, tenant) || runtime.engines.size === 0) return null;
        return (input) => scanProxied(input, runtime, this.queue, this.log);
      },
      ownEndpoints: () => this.bound.map((b) => ({ address: b.address, port: b.port })),
      outbound: this.#proxyOutbound,
      reader,
      lineGuard: () => new LineEndingGuard(),
      tls: { key: tls.key, cert: tls.cert },
      log: this.log,
    });
    const where = await proxy.listen();
    this.#proxies.push(proxy);
    this.bound.push({ name: spec.name, role: spec.role, ...where });
    this.log.info({ listener: spec.name, role: spec.role, ...where, tls: spec.tls }, 'listening');
  }

  #proxyDeps(config: Config): ProxyDeps {
    const egress = this.queue.egress;
    const transcripts = config.delivery.transcripts;
    return {
      heloName: config.delivery.heloName ?? config.hostname,
      connectTimeout: config.delivery.connectTimeout,
      replyTimeout: config.delivery.replyTimeout,
      ca: egress.ca,
      route: (domain) => egress.sites.route(domain),
      tlsPlan: (domain, via, hops) => egress.tlsPlan(domain, via, hops),
      siteLimits: (key) => egress.sites.limits(key),
      acquire: (tenant, site, leave) => this.queue.acquireLive(tenant, site, config.proxy.slotWait, leave),
      transcripts: transcripts.enabled ? { sink: this.queue.recordTranscript, maxBytes: transcripts.maxBytesPerSession } : null,
      signal: (site, source, tenant, signal) => this.queue.control.onSignal(site, source, tenant, signal),
      outbound: this.#proxyOutbound,
      cache: this.sessions,
      admit: (site, source, tenant) => this.queue.scheduler.admit(site, source, tenant),
      connections: (site, source) => this.queue.scheduler.connections(site, source),
    };
  }

  /** The admin API's TCP port, when admin.port is set. */
  get adminPort(): number | null {
    return this.#admin?.port ?? null;
  }

  listener(name: string): BoundListener {
    const l = this.bound.find((b) => b.name === name);
    if (!l) throw new Error(`no listener named ${name}`);
    return l;
  }

  /**
   * Publishes a new config snapshot: new transactions use it, open ones keep theirs; engines only
   * the old snapshots named are closed once the last transaction using them ends.
   */
  reconfigure(config: Config): number {
    // Everything that can fail is built before anything is published: a failure changes nothing.
    const egress = new Egress(config, this.sessions, { policies: this.#policies, log: this.log });
    const runtime = buildRuntime(this.#handle.current.generation + 1, config, this.engines, this.log);
    const snap = this.#handle.publish(config);
    const previous = this.#runtime;
    this.#runtime = runtime;
    previous.release();
    for (const l of [...this.#listeners, ...this.#proxies]) l.apply(config);
    this.queue.reconfigure(config, egress);
    return snap.generation;
  }

  /** Reads and validates the config file; a bad file changes nothing and is reported, naming the keys. */
  reload(file = this.configFile): ReloadResult {
    if (!file) return { ok: false, problems: ['no config file to reload from'] };
    let config: Config;
    try {
      config = loadConfig(file);
    } catch (err) {
      const problems = err instanceof ConfigError ? err.problems : [(err as Error).message];
      this.log.error({ file, problems }, 'reload refused: the running configuration stays');
      return { ok: false, problems };
    }
    const restart = needsRestart(this.config, config);
    let generation: number;
    try {
      generation = this.reconfigure(config);
    } catch (err) {
      const problems = [(err as Error).message];
      this.log.error({ file, problems }, 'reload failed: the running configuration stays');
      return { ok: false, problems };
    }
    this.log.info({ file, generation, engines: config.engines.map((e) => e.name), needsRestart: restart }, 'configuration reloaded');
    if (restart.length > 0) this.log.warn({ needsRestart: restart }, 'some changed settings apply only after a restart');
    return { ok: true, generation, needsRestart: restart };
  }

  #watcher: FSWatcher | null = null;

  /** Reloads when the file changes: editors write in bursts (truncate, write, rename), so wait for quiet. */
  #watch(file: string): void {
    let timer: NodeJS.Timeout | null = null;
    let last = '';
    const check = () => {
      timer = null;
      let text: string;
      try {
        text = readFileSync(file, 'utf8');
      } catch {
        return;
      }
      if (text === last) return;
      last = text;
      this.reload(file);
    };
    try {
      last = readFileSync(file, 'utf8');
    } catch {
      // reported at the first reload
    }
    // The folder is watched, not the file: an editor that renames a new file into place replaces the inode.
    this.#watcher = watch(dirname(file), (_event, name) => {
      if (name !== null && name !== basename(file)) return;
      if (timer) clearTimeout(timer);
      timer = setTimeout(check, 300);
    });
    this.#watcher.on('error', (err) => this.log.warn({ err, file }, 'cannot watch the config file any more; reload with SIGHUP or ichidan reload'));
    this.#watcher.on('close', () => { if (timer) clearTimeout(timer); });
  }

  /** Graceful stop: stop accepting, let open transactions finish, close the queue. */
  async stop(): Promise<void> {
    this.#watcher?.close();
    await Promise.all([...this.#listeners.map((l) => l.close()), ...this.#proxies.map((p) => p.close())]);
    await this.#admin?.close();
    await this.#passwords?.close();
    this.#runtime.release();
    await this.queue.close();
    this.sessions.closeAll();
  }
}

export { loadConfig, parseConfig, ConfigError } from './mta-config.js';
export type { Config } from './mta-config-schema.js';
