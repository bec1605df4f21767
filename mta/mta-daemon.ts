/*
 * The composition root: one running Ichidan, built from a config and stopped gracefully.
 *
 * Takes: one validated config snapshot (mta-config.ts), the file it came from (for reloads), and
 *   optionally a reader of proxied connections' original destination (tests on loopback).
 * Gives: `Ichidan.start`, which secures the data folder, opens and reconciles the queue (which
 *   delivers through `delivery/`), starts the admin API (admin/), the config watcher
 *   (mta-reload.ts), the SMTP listeners (ingress/, mail accepted into `queue/` after
 *   `engines/` had their say) and the transparent proxy listeners (proxy/); `reconfigure`, which
 *   publishes a new snapshot to all of them; `stop`: stop accepting, finish the open transactions,
 *   close the queue. Metrics are registered in mta-metrics.ts. `pressure` (admission/admission-pressure.ts)
 *   measures this node's load once the listeners are up, unless admission.mode is off.
 * Reads: the config file (reload), the TLS keys and certificates (at start and at every reload:
 *   ingress/ingress-certificates.ts), the data folder.
 * Network: the cluster's Redis when cluster.redis is set (mta-cluster.ts), the listeners (MX,
 *   submission and proxy, on loopback in the default), the admin
 *   socket and optional loopback port, DNS only to `dns.servers`; with admission.dns.enabled the
 *   DNS responder (admission/admission-dns.ts) on UDP and TCP, and the pairing addresses.
 * RFCs: 5321 (SMTP), 3207 (STARTTLS), 4954 (AUTH), 1870 (SIZE), 2920 (PIPELINING), 6152
 *   (8BITMIME), 6531 (SMTPUTF8), 2034/3463 (enhanced status codes), 3461 (DSN parameters).
 * Settings: all of them; see README "Configuration".
 */
import type { FSWatcher } from 'node:fs';
import type { Logger } from 'pino';
import type { Registry } from 'prom-client';
import { buildEngineSet, EngineHost, oversizeWarnings } from '../engines/index.js';
import { createResolver, reverseLookup } from '../delivery/delivery-route.js';
import { Egress, SmtpPool, StsPolicyCache, type OutboundSession } from '../delivery/index.js';
import { Queue } from '../queue/index.js';
import type { Config } from './mta-config-schema.js';
import { adminSocket, ConfigHandle } from './mta-config.js';
import { Policy } from './ingress/ingress-policy.js';
import { AdminServer } from './admin/admin-server.js';
import { AuthGuard } from './ingress/ingress-auth.js';
import { PasswordVerifier } from './ingress/ingress-auth-hash.js';
import { DovecotClients } from './ingress/ingress-auth-dovecot.js';
import { processMetrics } from './mta-metrics.js';
import type { TrafficHooks } from './mta-metrics-traffic.js';
import { packageVersion } from './mta-log.js';
import { FileWatch, reloadConfig, watchConfig, type ReloadResult } from './mta-reload.js';
import { Listener } from './ingress/ingress-server.js';
import { suppressedLive } from './ingress/ingress-suppression.js';
import type { Snapshot } from './mta-snapshot.js';
import { ProxyListener } from './proxy/proxy-listener.js';
import { loadOriginalDst, type OriginalDstReader } from './proxy/proxy-origdst.js';
import { proxySessionDeps } from './proxy/proxy-deps.js';
import { RELAY_TENANT } from './ingress/ingress-policy.js';
import { proxyScans, scanProxied } from './proxy/proxy-scan.js';
import { LineEndingGuard } from '../queue/accept/accept-receive.js';
import { ensureSelfSigned, type TlsMaterial } from './ingress/ingress-tls.js';
import { certificateFiles, loadCertificates, offerCertificates, type Certificates } from './ingress/ingress-certificates.js';
import { secureDataDir } from './mta-datadir.js';
import { Cluster, localStatus, type ClusterDeps, type ClusterStatus } from './mta-cluster.js';
import { SharedState } from './mta-shared.js';
import { Drain } from './mta-drain.js';
import { Pressure, ScanTimings, type AdmissionStatus } from './admission/admission-pressure.js';
import { Admission } from './admission/admission.js';
import { RecipientCheck } from './ingress/ingress-recipients.js';
import { RecipientVerifier, redisAnswers, type SharedAnswers } from './ingress/ingress-recipients-verify.js';
import { DkimKeys, type DkimCount } from '../queue/accept/accept-dkim-keys.js';
import { dkimWarnings } from '../queue/accept/accept-dkim-config.js';
import { KnownSenders } from './admission/admission-senders.js';
import { learnedFrom, type LearnInput } from './admission/admission-learn.js';
import { DnsResponder, type ResolverStandings } from './admission/admission-dns.js';
import type { NodeInfo } from './admission/admission-steer.js';
import { acceptQueue } from './admission/admission-backlog.js';
import { KnownQueueSteering } from './mta-known-queue.js';
import type { Level } from './admission/admission-decide.js';

/** What the DNS responder is started with: by default the known senders and the measured level (tests give their own). */
export interface DnsInputs {
  senders: ResolverStandings;
  level: () => Level;
  /** In a cluster: its live nodes, which the responder hands out as primary hosts by load. */
  nodes?: () => NodeInfo[];
}

export interface BoundListener {
  name: string;
  role: 'mx' | 'submission' | 'proxy';
  address: string;
  port: number;
}

/** What the snapshots' recipient checks share across reloads: the probe cache and the metrics. */
interface RecipientDeps {
  verifier: RecipientVerifier;
  count: (result: string, by: string) => void;
}

function buildSnapshot(generation: number, config: Config, host: EngineHost, log: Logger, dkimCount: DkimCount, recipients: RecipientDeps): Snapshot {
  const resolver = createResolver(config);
  const engines = buildEngineSet(config, host, { hostname: config.hostname, resolver, log });
  // At start and at every reload: mail between an engine's maxSize and the largest accepted is not checked by it.
  for (const warning of oversizeWarnings(config.engines, config.limits.maxMessageSize)) log.warn({ setting: 'engines[].maxSize' }, warning);
  for (const warning of dkimWarnings(config.tenants)) log.warn({ setting: 'tenants.<name>.dkim[].key' }, warning);
  const dkim = new DkimKeys(config.tenants, dkimCount);
  // One use belongs to Ichidan while this is the current snapshot; each transaction takes another.
  let uses = 1;
  return {
    generation,
    config,
    policy: new Policy(config),
    recipients: new RecipientCheck(config, { ...recipients, log }),
    engines,
    reverse: resolver && config.dns.reverseLookup ? reverseLookup(resolver) : null,
    dkim,
    retain: () => { uses++; },
    release: () => {
      if (--uses === 0) engines.release();
    },
  };
}

export class Ichidan {
  readonly #handle: ConfigHandle;
  #snapshot: Snapshot;
  readonly #listeners: Listener[] = [];
  readonly #proxies: ProxyListener[] = [];
  readonly #proxyOutbound = new Set<string>();
  #admin: AdminServer | null = null;
  #watcher: FSWatcher | null = null;
  /** The certificate files, reloaded when renewed (admin.watchConfig). */
  #certificateWatch: FileWatch | null = null;
  #passwords: PasswordVerifier | null = null;
  /** Dovecot's auth service, when auth.backend says so (ingress/ingress-auth-dovecot.ts). */
  readonly #dovecot = new DovecotClients();
  #policies = new StsPolicyCache();
  readonly #recipients: RecipientDeps;
  readonly #dkimCount: DkimCount;
  /** Mail in and out, told to the metrics (mta-metrics-traffic.ts). */
  readonly #traffic: TrafficHooks;
  readonly engines: EngineHost;
  readonly metrics: Registry;
  bound: BoundListener[] = [];
  /** This node's part in a cluster (mta-cluster.ts); null when cluster.redis is not set. */
  cluster: Cluster | null = null;
  /** The holds, suspensions, pauses, engine switches and releases shared with the cluster (mta-shared.ts); null without one. */
  shared: SharedState | null = null;
  /** The known senders (admission/admission-senders.ts): learned from every message, shared in a cluster. */
  senders: KnownSenders | null = null;
  /** Set by a drain: the listeners refuse new mail and the queue is handed to peers. */
  draining = false;
  /** `ichidan node drain` / `undrain` (mta-drain.ts). */
  readonly drain: Drain;
  /** This node's pressure level and signals (admission/admission-pressure.ts); read only while admission.mode is not off. */
  readonly pressure: Pressure;
  /** Known senders first under pressure (admission/admission.ts). */
  readonly admission: Admission;
  /** The DNS responder (admission-dns.ts), when admission.dns.enabled. */
  dns: DnsResponder | null = null;
  /** Known senders' own accept queue on the admission listeners (mta-known-queue.ts). */
  readonly #knownQueue: KnownQueueSteering;
  /** The known senders and the measured level (set in `start`, before the responder). */
  #dnsInputs!: DnsInputs;
  /** The pairing addresses the mx listener took at start (none when the responder was off then). */
  #pairingTaken: string[] = [];
  /** Reloads change the responder one after another. */
  #dnsChange: Promise<void> = Promise.resolve();
  readonly #clusterDeps: ClusterDeps;
  /** The file `reload()` reads by default (the one the process started from). */
  configFile: string | null = null;
  /** How `reload()` turns the file into this process's config (a worker derives its own). */
  #load: ((file: string) => Config) | undefined;

  private constructor(config: Config, readonly queue: Queue, readonly log: Logger, private readonly sessions: SmtpPool, clusterDeps: ClusterDeps) {
    this.#handle = new ConfigHandle(config);
    this.#clusterDeps = clusterDeps;
    const metrics = processMetrics({
      engines: () => this.engines.list(), queue, cluster: () => this.cluster, shared: () => this.shared?.state ?? null,
      pressure: () => this.pressure, senders: () => this.senders, dns: () => this.dns,
      knownQueues: () => this.#knownQueues(), scans: () => this.admission?.slots.status() ?? null,
      tenants: () => this.config.tenants, volumes: () => ({ spool: queue.spool.dir, database: this.config.dataDir }),
    });
    this.metrics = metrics.registry;
    this.#traffic = metrics.traffic;
    queue.onAttempt = (e) => metrics.traffic.attempt(e);
    queue.onScan = (record) => metrics.traffic.scan(record);
    this.engines = new EngineHost(queue.records.engineSwitches(), (e) => {
      metrics.engineEvent(e);
      const level = e.event === 'breaker' && e.to === 'open' ? 'warn' : 'info';
      log[level]({ engine: e.engine, event: e.event, from: e.from, to: e.to, reason: e.reason }, `engine ${e.event}${e.to ? ` ${e.from} → ${e.to}` : ''}`);
      queue.records.recordEngineEvent(e);
    });
    queue.control.onEvent = (e) => metrics.egressEvent(e);
    // The tenant label stays bounded: tenants no longer configured count as one.
    queue.suppressions.onBounce = (tenant, cls) => metrics.bounce(tenant in this.config.tenants || tenant === RELAY_TENANT ? tenant : '_other', cls);
    queue.spool.fsyncs.onSample = (ms) => metrics.fsync(ms);
    const scanTimes = new ScanTimings();
    this.pressure = new Pressure(config.admission.pressure, {
      sessions: (peek) => admissionSessions(this.#listeners.filter((l) => this.admission.guards(l.spec)), this.admission.takeTurnedAway(peek)),
      scans: () => {
        const { known, unknown } = this.admission.slots.waiting;
        return { ...scanTimes.p90(this.config.admission.pressure.interval), queued: (known + unknown) / this.config.admission.scans };
      },
      mxQueryRatio: () => this.dns?.mxQueryRatio() ?? null,
      connectionRatio: () => this.admission.connectionRatio(),
      connectionSurgeRatio: () => this.admission.connectionSurgeRatio(),
      acceptQueue: () => acceptQueue(this.#listeners.filter((l) => this.admission.guards(l.spec)).flatMap((l) => [...this.bound.filter((b) => b.name === l.spec.name), ...l.pairingEndpoints()])),
    }, {
      fsyncP99Ms: () => queue.fsyncP99Ms(this.config.admission.pressure.interval),
      diskFree: () => queue.diskFree(),
    }, log);
    this.pressure.on('level', (to) => metrics.levelChange(to));
    // In a cluster the probes' answers are shared through its Redis (joined after this is built).
    let answers: SharedAnswers | null = null;
    const shared = () => (this.cluster ? (answers ??= redisAnswers(this.cluster.link)) : null);
    this.#recipients = { verifier: new RecipientVerifier(log, (answer) => metrics.recipientProbe(answer), undefined, undefined, shared), count: (result, by) => metrics.recipientCheck(result, by) };
    this.#dkimCount = (key, result) => metrics.dkimSignature(key, result);
    this.#snapshot = buildSnapshot(1, config, this.engines, log, this.#dkimCount, this.#recipients);
    this.admission = new Admission(config, {
      // The known senders once open (Ichidan.start); before that, trusted networks only.
      senders: {
        standing: (address) => this.senders?.standing(address) ?? (this.#snapshot.policy.isTrusted(address) ? 'pinned' : 'unknown'),
        standingOf: (kind, key) => this.senders?.standingOf(kind, key) ?? 'unknown',
      },
      pressure: this.pressure,
      slots: scanTimes,
      count: (point, action, reason, n) => metrics.admissionDecision(point, action, reason, n),
      log,
    });
    this.#knownQueue = new KnownQueueSteering(() => this.config, () => this.senders, this.admission, () => this.pressure.level, () => this.draining, () => this.#listeners, log, (listener, waiting, at) => {
      log.warn({ listener, waiting }, `the known queue's guard met a flood on ${listener} (${waiting} connections waiting): everyone else is refused at the socket`);
      this.pressure.guarded(listener, waiting, at);
    });
    this.pressure.on('level', () => this.#knownQueue.refresh());
    this.drain = new Drain({
      queue, log, cluster: () => this.cluster, config: () => this.config,
      setDraining: (on) => {
        this.draining = on;
        this.#knownQueue.refresh();
        // The peers learn it now, not at the next heartbeat: none should hand this node mail meanwhile.
        void this.cluster?.nodes.beat();
      },
    });
  }

  #knownQueues(): AdmissionStatus['knownQueues'] {
    return this.#listeners.flatMap((l) => {
      const q = l.knownQueue();
      return q ? [{ listener: l.spec.name, ...q }] : [];
    });
  }

  /** `ichidan admission status` (admin/admin-admission.ts). */
  admissionStatus(): AdmissionStatus {
    return { mode: this.config.admission.mode, measuring: this.pressure.running, ...this.pressure.status(), knownQueues: this.#knownQueues(), scans: this.admission.slots.status() };
  }

  /** `ichidan cluster status` (mta-cluster.ts). */
  clusterStatus(): Promise<ClusterStatus> {
    return this.cluster ? this.cluster.status() : Promise.resolve(localStatus(this.config, this.#clusterDeps));
  }

  get config(): Config {
    return this.#snapshot.config;
  }

  get generation(): number {
    return this.#snapshot.generation;
  }

  /**
   * `originalDst` stands in for the kernel's answer to where a proxied connection was going (on
   * a system without netfilter, or in a test on loopback); by default the native addon is asked.
   */
  static async start(config: Config, log: Logger, opts: { configFile?: string; load?: (file: string) => Config; originalDst?: OriginalDstReader; dns?: DnsInputs } = {}): Promise<Ichidan> {
    await secureDataDir(config.dataDir, log);
    // Before anything opens: a certificate that cannot be offered stops the start, naming its key.
    if (config.tls.cert === undefined) await ensureSelfSigned(config);
    const certs = loadCertificates(config);
    for (const warning of certs.warnings) log.warn(warning);
    const sessions = new SmtpPool();
    // One MTA-STS policy cache for the life of the process: a reload keeps the policies learnt.
    const policies = new StsPolicyCache();
    let app: Ichidan | null = null;
    const clusterDeps: ClusterDeps = {
      queue: () => app?.queue ?? null,
      smtp: () => {
        const mx = app?.bound.find((b) => b.role === 'mx');
        return mx && { address: mx.address, port: mx.port };
      },
      draining: () => app?.draining ?? false,
      level: () => app?.pressure.level ?? 'normal',
    };
    const cluster = await Cluster.join(config, clusterDeps, log);
    const onSession = (s: OutboundSession) => { if (app) app.#outboundSession(s); };
    const { queue, report } = await Queue.open(config, new Egress(config, sessions, { policies, log, onSession }), log, cluster?.shared);
    app = new Ichidan(config, queue, log, sessions, clusterDeps);
    app.cluster = cluster;
    app.#policies = policies;
    app.configFile = opts.configFile ?? null;
    app.#load = opts.load;
    log.info({ active: report.active, cleaned: report.cleaned, corrupt: report.corrupt.length }, 'queue reconciled');
    app.shared = cluster && SharedState.start(cluster, queue, app.engines, log);
    // Known senders: trusted networks and tenants' networks stand pinned without being learned.
    app.senders = KnownSenders.open({
      dataDir: config.dataDir, config: config.admission.senders, link: cluster?.link ?? null, log,
      trusted: (address) => {
        const policy = app!.#snapshot.policy;
        return policy.isTrusted(address) || policy.tenantOfClient(address) !== undefined;
      },
    });
    // The known senders learn from each message's outcome (not with admission.mode off).
    const learn = (input: LearnInput) => {
      if (app!.config.admission.mode !== 'off') app!.senders?.record(learnedFrom({ ...input, level: app!.pressure.level }));
    };
    app.#admin = await AdminServer.listen(adminSocket(config), app, log);
    app.#dnsInputs = opts.dns ?? { senders: app.senders, level: () => app.pressure.level, ...(cluster ? { nodes: () => dnsNodes(cluster) } : {}) };
    app.#pairingTaken = config.admission.dns.enabled ? config.admission.dns.pairingAddresses : [];
    await app.#applyDns(config);
    const file = app.configFile;
    if (config.admin.watchConfig && file) {
      app.#watcher = watchConfig(file, () => app.reload(file), log);
      app.#certificateWatch = new FileWatch(() => {
        log.info('a certificate file changed: reloading');
        app.reload(file);
      });
      app.#certificateWatch.set(certificateFiles(config));
    }
    const passwords = app.#passwords = new PasswordVerifier(config.auth);
    const auth = new AuthGuard(passwords, undefined, app.#dovecot, (entry, message) => log.warn(entry, message));
    for (const spec of config.listeners) {
      if (spec.role === 'proxy') {
        await app.#startProxy(spec, certs, opts.originalDst);
        continue;
      }
      const listener = new Listener(spec, {
        snapshot: () => app.#snapshot, queue, tls: certs.of(spec.name).pair, log, auth, draining: () => app.draining, admission: app.admission, learn, dns: () => app.dns,
        events: app.#traffic.ingress, knownQueue: app.#knownQueue.forListener(spec),
      });
      offerCertificates(listener.server, certs.of(spec.name));
      const where = await listener.listen();
      app.#listeners.push(listener);
      app.bound.push({ name: spec.name, role: spec.role, ...where });
      log.info({ listener: spec.name, role: spec.role, ...where, tls: spec.tls }, 'listening');
    }
    if (config.admission.mode !== 'off') app.pressure.start();
    app.#knownQueue.start();
    log.info({ version: packageVersion(), config: app.configFile, generation: app.generation, listeners: app.bound.length }, 'started');
    return app;
  }

  /** An outbound session opened: logged with its TLS parameters and the address connected to, and counted. */
  #outboundSession(s: OutboundSession): void {
    this.#traffic.session(s);
    this.log.info({
      qid: s.queueId, tenant: s.tenant, site: s.site, host: s.host, address: s.address, port: s.port,
      protocol: s.tls?.protocol ?? null, cipher: s.tls?.cipher ?? null, session: s.session,
    }, 'outbound session');
  }

  /** A proxy listener, when the kernel can say where its connections were going; else reported, and everything else runs. */
  async #startProxy(spec: Config['listeners'][number], certs: Certificates, given?: OriginalDstReader): Promise<void> {
    const tls: TlsMaterial = certs.of(spec.name).pair;
    const reader = given ?? loadOriginalDst();
    if ('error' in reader) {
      this.log.error({ listener: spec.name, reason: reader.error }, 'proxy listener not started: the original destination of redirected connections cannot be read');
      return;
    }
    const proxy = new ProxyListener(spec, {
      config: () => this.config,
      policy: () => this.#snapshot.policy,
      tenantOf: (address) => {
        const policy = this.#snapshot.policy;
        return policy.tenantOfClient(address) ?? (policy.isTrusted(address) ? RELAY_TENANT : undefined);
      },
      session: (config) => proxySessionDeps(config, this.queue, this.sessions, this.#proxyOutbound),
      suppressed: (tenant, address) => suppressedLive(this.queue, { tenant, address }, 'proxy', this.log),
      scanner: (tenant) => {
        const snapshot = this.#snapshot;
        if (!proxyScans(snapshot.config.proxy.scan, tenant) || snapshot.engines.size === 0) return null;
        return (input) => scanProxied(input, snapshot, this.queue, this.log);
      },
      ownEndpoints: () => this.bound.map((b) => ({ address: b.address, port: b.port })),
      outbound: this.#proxyOutbound,
      reader,
      lineGuard: () => new LineEndingGuard(),
      tls: { key: tls.key, cert: tls.cert },
      log: this.log,
      events: this.#traffic.ingress,
    });
    offerCertificates(proxy.server, certs.of(spec.name));
    const where = await proxy.listen();
    this.#proxies.push(proxy);
    this.bound.push({ name: spec.name, role: spec.role, ...where });
    this.log.info({ listener: spec.name, role: spec.role, ...where, tls: spec.tls }, 'listening');
  }

  /** Each configured listener and whether it listens now (admin/admin-health.ts). */
  listening(): Array<{ name: string; listening: boolean }> {
    const servers = [...this.#listeners, ...this.#proxies];
    return this.config.listeners.map((l) => ({ name: l.name, listening: servers.some((s) => s.spec.name === l.name && s.server.server.listening) }));
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
    // The certificate files are read again, so a renewed pair is offered to new connections.
    const certs = loadCertificates(config);
    for (const warning of certs.warnings) this.log.warn(warning);
    const egress = new Egress(config, this.sessions, { policies: this.#policies, log: this.log, onSession: (s) => this.#outboundSession(s) });
    const snapshot = buildSnapshot(this.#handle.current.generation + 1, config, this.engines, this.log, this.#dkimCount, this.#recipients);
    const snap = this.#handle.publish(config);
    const previous = this.#snapshot;
    this.#snapshot = snapshot;
    previous.release();
    for (const l of [...this.#listeners, ...this.#proxies]) {
      l.apply(config);
      offerCertificates(l.server, certs.of(l.spec.name));
    }
    this.admission.apply(config);
    this.#dnsChange = this.#dnsChange.then(() => this.#applyDns(config)).catch((err) => this.log.error({ err }, 'dns responder not restarted'));
    this.queue.reconfigure(config, egress);
    this.pressure.apply(config.admission.pressure);
    if (config.admission.mode === 'off') this.pressure.stop();
    else this.pressure.start();
    this.senders?.apply(config.admission.senders);
    this.#certificateWatch?.set(certificateFiles(config));
    return snap.generation;
  }

  /** Reads, validates and publishes the config file (mta-reload.ts); a bad file changes nothing. */
  reload(file = this.configFile): ReloadResult {
    if (!file) return { ok: false, problems: ['no config file to reload from'] };
    return reloadConfig(file, this.config, (config) => this.reconfigure(config), this.log, this.#load);
  }

  /**
   * The DNS responder follows admission.dns: started when enabled, stopped when not, restarted
   * when its address or port changes, else given the new config. (Pairing addresses apply at the
   * process's next start: the listener takes them once.)
   */
  async #applyDns(config: Config): Promise<void> {
    const want = config.admission.dns;
    const running = this.dns;
    if (running && want.enabled && running.address.address === want.address && (want.port === 0 || running.address.port === want.port)) {
      running.apply(config);
      return;
    }
    this.dns = null;
    await running?.close();
    if (!want.enabled) return;
    // A responder started later hands out only the pairing addresses the listener took at start.
    const taken = { ...config, admission: { ...config.admission, dns: { ...want, pairingAddresses: this.#pairingTaken } } };
    this.dns = await DnsResponder.start({ config: taken, ...this.#dnsInputs, log: this.log });
  }

  /** Graceful stop: stop accepting, let open transactions finish, close the queue. */
  async stop(): Promise<void> {
    this.#watcher?.close();
    this.#certificateWatch?.close();
    this.pressure.stop();
    this.#knownQueue.stop();
    await this.drain.close();
    await Promise.all([...this.#listeners.map((l) => l.close()), ...this.#proxies.map((p) => p.close())]);
    await this.#admin?.close();
    await this.#passwords?.close();
    this.#dovecot.close();
    this.#snapshot.release();
    await this.shared?.close();
    await this.#dnsChange;
    await this.dns?.close();
    this.dns = null;
    await this.queue.close();
    await this.senders?.close();
    this.sessions.closeAll();
    await this.cluster?.close();
  }
}

/**
 * Admission's sessions signal: the sessions wanted on the admission listeners (those the door
 * guards: admission.listeners, or every mx listener) — the connections open, and those the door
 * turned away since the last reading (else refusing a flood would look like quiet, and the level
 * would fall while the flood goes on) — against the sum of their maxClients.
 */
function admissionSessions(listeners: readonly Listener[], turnedAway: number): { open: number; limit: number } {
  let open = turnedAway;
  let limit = 0;
  for (const l of listeners) {
    open += (l.server as unknown as { connections: { size: number } }).connections.size;
    limit += l.spec.maxClients;
  }
  return { open, limit };
}

/**
 * The cluster's nodes as the DNS responder hands them out: the live ones that take mail (not
 * draining) at a reachable MX listener, least loaded first by their event-loop delay.
 */
function dnsNodes(cluster: Cluster): NodeInfo[] {
  return cluster.liveNodes()
    .filter((n) => n.smtp && !n.draining && n.smtp.address !== '0.0.0.0' && n.smtp.address !== '::')
    .map((n) => ({ name: n.node, address: n.smtp!.address, load: n.loopDelayMs, level: n.level ?? 'normal' }));
}
