/*
 * The process's metrics: every Prometheus counter and gauge, registered here and nowhere else.
 *
 * Takes: the engines' list (state and breaker) and the queue (scheduler, free space, outcomes
 *   not yet committed), read when the metrics are collected; engine and egress events as they
 *   happen (the composition root passes them on).
 * Gives: the registry the admin API serves at GET /metrics (admin/admin-metrics.ts):
 *   ichidan_engine_events_total{engine,event,to}   breaker transitions and operator switches
 *   ichidan_engine_up{engine,breaker,state}        1 when the engine is used
 *   ichidan_egress_events_total{kind,actor}        throttle reactions and operator holds
 *   ichidan_deliveries_in_flight, ichidan_deliveries_waiting
 *   ichidan_egress_pair_window{site,source}        the slow-start window per pair
 *   ichidan_queue_free_bytes, ichidan_queue_outcomes_uncommitted, ichidan_egress_blocks
 *   ichidan_spool_fsync_seconds                     histogram of each spool sync (the journal's, a large message's file or the folder)
 *   ichidan_queue_db_sync_points_total              queue database commits that synced it (queue-store-worker.ts)
 *   ichidan_spool_journal_segments_retired_total, ichidan_spool_journal_settled_total  journal segments
 *                                                    retired, and queued messages settled in place for one to go
 *   with admission's pressure (admission/admission-pressure.ts):
 *   ichidan_admission_level                         0 normal, 1 busy, 2 overload
 *   ichidan_admission_signal{signal}                each signal's last value (ms, a share or a multiple)
 *   ichidan_admission_signal_level{signal}          each signal's own level (0, 1, 2)
 *   ichidan_admission_level_changes_total{to}       changes of level, by the level entered
 *   ichidan_admission_decisions_total{point,action,reason}  the admission's decisions (mta/admission/)
 *   ichidan_recipient_checks_total{result,by}       recipient validation at RCPT (ingress/ingress-recipients.ts)
 *   ichidan_recipient_probes_total{answer}          probes sent to mailbox servers (known, unknown, unavailable)
 *   ichidan_bounces_total{tenant,class}              bounces by class (queue/queue-classify.ts; 'suppressed':
 *                                                    stopped by the suppression list); tenant: a configured
 *                                                    one, `_relay`, or `_other` (the caller bounds it)
 *   ichidan_admission_senders{kind,standing}       known-sender entries (admission/admission-senders.ts; kept counts, no scan)
 *   ichidan_admission_known_queue_networks{listener}  networks the kernel steers to known senders' own accept queue
 *   ichidan_admission_known_queue_connections_total{listener}  connections that queue took (ingress/ingress-known-queue.ts)
 *   ichidan_admission_known_queue_surges_total{listener}  floods its guard met at the socket (the general queue at admission.knownQueueGuard)
 *   ichidan_admission_scans{priority}               messages being scanned, known and unknown senders' (queue/accept/accept-slots.ts)
 *   ichidan_admission_scans_waiting{priority}       messages waiting for a scan slot
 *   ichidan_admission_unknown_scans_limit           unknown senders' scans allowed at once now (queue/accept/accept-slots-limit.ts)
 *   ichidan_dkim_signatures_total{tenant,domain,selector,result}  DKIM signatures made (signed) and
 *     keys that failed to sign (failed; tenant, domain and selector empty when no key was tried)
 *   with a cluster (mta-cluster.ts):
 *   ichidan_cluster_redis_up                         1 while the cluster's Redis answers
 *   ichidan_cluster_redis_commands_total             Redis commands this node sent
 *   ichidan_cluster_fallback_decisions_total         limits decided locally because Redis was away
 *   ichidan_cluster_leases_held                      connection leases this node holds
 *   ichidan_cluster_nodes_live                       live nodes in the registry
 *   ichidan_cluster_state_changes_total{direction}  shared state (mta-shared.ts): changes published, applied from other nodes
 *   ichidan_cluster_state_reloads_total, ichidan_cluster_state_unpublished, ichidan_cluster_state_synced
 *   with the DNS responder (admission/admission-dns.ts):
 *   ichidan_dns_answers_total{mode,mechanism}       answers by mode (normal, high) and what chose them
 *   the traffic (connections, transactions, messages, deliveries, deferrals, queue depth, scans,
 *   outbound sessions): mta-metrics-traffic.ts; Node's process metrics and the disks' free space:
 *   mta-metrics-process.ts.
 */
import { Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { EngineEvent, EngineInfo } from '../engines/index.js';
import type { Queue } from '../queue/index.js';
import type { ClusterState } from '../queue/cluster/cluster-state.js';
import type { Cluster } from './mta-cluster.js';
import type { DnsResponder } from './admission/admission-dns.js';
import { rank, type Level } from './admission/admission-levels.js';
import type { Pressure } from './admission/admission-pressure.js';
import type { KnownSenders } from './admission/admission-senders.js';
import type { ScanSlotsStatus } from '../queue/accept/accept-slots.js';
import { processHealthMetrics, type Volumes } from './mta-metrics-process.js';
import { trafficMetrics, type TrafficHooks } from './mta-metrics-traffic.js';

export interface MetricSources {
  engines(): EngineInfo[];
  queue: Pick<Queue, 'scheduler' | 'space' | 'pendingOutcomes' | 'gate' | 'depth' | 'store' | 'journal'>;
  /** The configured tenants: the tenant labels' bound. */
  tenants: () => Readonly<Record<string, unknown>>;
  /** The spool's and the queue database's folders (their free space). */
  volumes?: () => Volumes | null;
  cluster?: () => Cluster | null;
  /** The shared state, in a cluster. */
  shared?: () => Pick<ClusterState, 'published' | 'applied' | 'reloads' | 'outboxed' | 'synced'> | null;
  /** Admission's pressure, once started (null while admission.mode is off). */
  pressure?: () => Pick<Pressure, 'level' | 'signals'> | null;
  /** The known senders, once open. */
  senders?: () => Pick<KnownSenders, 'counts'> | null;
  /** The DNS responder, when admission.dns.enabled. */
  dns?: () => Pick<DnsResponder, 'answers'> | null;
  /** Known senders' own accept queue of each listener that has one. */
  knownQueues?: () => Array<{ listener: string; networks: number; accepted: number; surges: number }>;
  /** The scan slots, once admission is built. */
  scans?: () => ScanSlotsStatus | null;
}

export interface ProcessMetrics {
  readonly registry: Registry;
  /** Mail in and out, the scans, the outbound sessions (mta-metrics-traffic.ts). */
  readonly traffic: TrafficHooks;
  engineEvent(e: EngineEvent): void;
  egressEvent(e: { kind: string; actor: string }): void;
  /** A spool fsync took this long. */
  fsync(ms: number): void;
  /** The pressure level changed to `to`. */
  levelChange(to: Level): void;
  admissionDecision(point: string, action: string, reason: string, n?: number): void;
  recipientCheck(result: string, by: string): void;
  recipientProbe(answer: string): void;
  bounce(tenant: string, cls: string): void;
  dkimSignature(key: { tenant: string; domain: string; selector: string } | null, result: 'signed' | 'failed'): void;
}

export function processMetrics({ engines, queue, tenants, volumes = () => null, cluster, shared = () => null, pressure = () => null, senders = () => null, dns = () => null, knownQueues = () => [], scans = () => null }: MetricSources): ProcessMetrics {
  const registry = new Registry();
  const registers = [registry];
  processHealthMetrics(registry, volumes);
  const traffic = trafficMetrics(registers, { tenants, depth: () => queue.depth() });
  const transitions = new Counter({
    name: 'ichidan_engine_events_total', help: 'Engine breaker transitions and operator switches', labelNames: ['engine', 'event', 'to'], registers,
  });
  new Gauge({
    name: 'ichidan_engine_up', help: '1 when the engine is used (enabled, breaker not open)', labelNames: ['engine', 'breaker', 'state'], registers,
    collect() {
      this.reset();
      for (const e of engines()) this.set({ engine: e.name, breaker: e.breaker, state: e.state }, e.state === 'enabled' && e.breaker !== 'open' ? 1 : 0);
    },
  });
  const scheduler = queue.scheduler;
  const egressEvents = new Counter({
    name: 'ichidan_egress_events_total', help: 'Throttle reactions and operator holds on the delivery side', labelNames: ['kind', 'actor'], registers,
  });
  new Gauge({
    name: 'ichidan_deliveries_in_flight', help: 'Delivery attempts running now', registers,
    collect() { this.set(scheduler.active); },
  });
  new Gauge({
    name: 'ichidan_deliveries_waiting', help: 'Delivery jobs due or scheduled, not running', registers,
    collect() { this.set(scheduler.waiting); },
  });
  new Gauge({
    name: 'ichidan_egress_pair_window', help: 'Connections allowed now per (destination site, source address): the slow-start window', labelNames: ['site', 'source'], registers,
    collect() {
      this.reset();
      for (const p of scheduler.pairs()) this.set({ site: p.site, source: p.source || 'default' }, p.window);
    },
  });
  new Gauge({
    name: 'ichidan_queue_free_bytes', help: 'Least free space on the spool\'s and the queue database\'s filesystems (new mail waits below queue.minFree)', registers,
    collect() { if (Number.isFinite(queue.space.free)) this.set(queue.space.free); },
  });
  new Gauge({
    name: 'ichidan_queue_outcomes_uncommitted', help: 'Delivery outcomes held in memory because the queue database could not commit them yet', registers,
    collect() { this.set(queue.pendingOutcomes.size); },
  });
  new Gauge({
    name: 'ichidan_egress_blocks', help: 'Holds, suspensions and pauses in force', registers,
    collect() { this.set(scheduler.blocks().length); },
  });
  new Gauge({
    name: 'ichidan_admission_senders', help: 'Known-sender entries by kind (network, user, domain, resolver) and standing', labelNames: ['kind', 'standing'], registers,
    collect() {
      const known = senders();
      if (!known) return;
      for (const c of known.counts()) this.set({ kind: c.kind, standing: c.standing }, c.n);
    },
  });
  new Gauge({
    name: 'ichidan_admission_known_queue_networks', help: 'Networks the kernel steers to known senders\' own accept queue', labelNames: ['listener'], registers,
    collect() {
      this.reset();
      for (const q of knownQueues()) this.set({ listener: q.listener }, q.networks);
    },
  });
  new Counter({
    name: 'ichidan_admission_known_queue_connections_total', help: 'Connections known senders\' own accept queue took', labelNames: ['listener'], registers,
    collect() {
      this.reset();
      for (const q of knownQueues()) this.inc({ listener: q.listener }, q.accepted);
    },
  });
  new Counter({
    name: 'ichidan_admission_known_queue_surges_total', help: 'Floods the known queue\'s guard met at the socket and refused there before the event loop saw them', labelNames: ['listener'], registers,
    collect() {
      this.reset();
      for (const q of knownQueues()) this.inc({ listener: q.listener }, q.surges);
    },
  });
  new Gauge({
    name: 'ichidan_admission_scans', help: 'Messages being scanned, by the sender\'s priority (known, unknown)', labelNames: ['priority'], registers,
    collect() {
      const slots = scans();
      if (!slots) return;
      this.set({ priority: 'known' }, slots.inUse - slots.unknown.inUse);
      this.set({ priority: 'unknown' }, slots.unknown.inUse);
    },
  });
  new Gauge({
    name: 'ichidan_admission_scans_waiting', help: 'Messages waiting for a scan slot, by the sender\'s priority', labelNames: ['priority'], registers,
    collect() {
      const slots = scans();
      if (!slots) return;
      for (const priority of ['known', 'unknown'] as const) this.set({ priority }, slots.waiting[priority]);
    },
  });
  new Gauge({
    name: 'ichidan_admission_unknown_scans_limit', help: 'Unknown senders\' messages the engines may read at once now: as many as they take without queueing (admission.unknownScans)', registers,
    collect() {
      const slots = scans();
      if (slots) this.set(slots.unknown.limit);
    },
  });
  new Counter({
    name: 'ichidan_queue_db_sync_points_total', help: 'Queue database commits that synced it (every earlier unsynced commit went to the device with them)', registers,
    collect() { this.reset(); this.inc(queue.store.syncPoints); },
  });
  new Counter({
    name: 'ichidan_spool_journal_segments_retired_total', help: 'Spool journal segments retired (recycled or deleted)', registers,
    collect() { if (queue.journal) { this.reset(); this.inc(queue.journal.retired); } },
  });
  new Counter({
    name: 'ichidan_spool_journal_settled_total', help: 'Queued messages synced in place so that their journal segment could be retired (copied forward)', registers,
    collect() { if (queue.journal) { this.reset(); this.inc(queue.journal.settled); } },
  });
  const fsyncs = new Histogram({
    name: 'ichidan_spool_fsync_seconds', help: 'Time of each spool sync (the spool journal\'s, a large message file\'s, or the spool folder\'s shared one)', registers,
    buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
  });
  const levelChanges = pressureMetrics(registers, pressure);
  const admissionDecisions = new Counter({
    name: 'ichidan_admission_decisions_total', help: 'Admission decisions at connect, MAIL FROM, RCPT, the end of DATA and AUTH, by action (greet, delay, refuse, go) and reason', labelNames: ['point', 'action', 'reason'], registers,
  });
  const recipientChecks = new Counter({
    name: 'ichidan_recipient_checks_total', help: 'Recipients checked at RCPT, by result (accepted, unknown, unavailable) and what answered (list, file, catchall, postmaster, verify, cache, cluster)', labelNames: ['result', 'by'], registers,
  });
  const recipientProbes = new Counter({
    name: 'ichidan_recipient_probes_total', help: 'Recipient verification probes sent to mailbox servers, by answer', labelNames: ['answer'], registers,
  });
  const bounces = new Counter({
    name: 'ichidan_bounces_total', help: 'Recipients bounced, by tenant and bounce class (suppressed: stopped by the tenant\'s suppression list)', labelNames: ['tenant', 'class'], registers,
  });
  const dkimSignatures = new Counter({
    name: 'ichidan_dkim_signatures_total', help: 'DKIM signatures made, and keys that failed to sign, per key', labelNames: ['tenant', 'domain', 'selector', 'result'], registers,
  });
  if (cluster) {
    clusterMetrics(registers, cluster, queue);
    sharedStateMetrics(registers, shared);
  }
  dnsMetrics(registers, dns);
  return {
    registry,
    traffic,
    engineEvent: (e) => transitions.inc({ engine: e.engine, event: e.event, to: e.to ?? '' }),
    egressEvent: (e) => egressEvents.inc({ kind: e.kind, actor: e.actor }),
    fsync: (ms) => fsyncs.observe(ms / 1000),
    levelChange: (to) => levelChanges.inc({ to }),
    admissionDecision: (point, action, reason, n = 1) => admissionDecisions.inc({ point, action, reason }, n),
    recipientCheck: (result, by) => recipientChecks.inc({ result, by }),
    recipientProbe: (answer) => recipientProbes.inc({ answer }),
    bounce: (tenant, cls) => bounces.inc({ tenant, class: cls }),
    dkimSignature: (key, result) => dkimSignatures.inc({ tenant: key?.tenant ?? '', domain: key?.domain ?? '', selector: key?.selector ?? '', result }),
  };
}

/** The pressure level and its signals (read when collected), and the changes of level (counted as they happen). */
function pressureMetrics(registers: Registry[], pressure: NonNullable<MetricSources['pressure']>): Counter<'to'> {
  new Gauge({
    name: 'ichidan_admission_level', help: 'The pressure level: 0 normal, 1 busy, 2 overload', registers,
    collect() { const p = pressure(); if (p) this.set(rank(p.level)); },
  });
  new Gauge({
    name: 'ichidan_admission_signal', help: 'Each pressure signal\'s last value (ms for times, a share for sessions and free space, a multiple of the normal rate for MX queries)', labelNames: ['signal'], registers,
    collect() {
      this.reset();
      for (const [signal, r] of Object.entries(pressure()?.signals() ?? {})) if (r.value !== null) this.set({ signal }, r.value);
    },
  });
  new Gauge({
    name: 'ichidan_admission_signal_level', help: 'Each pressure signal\'s own level by its thresholds: 0 normal, 1 busy, 2 overload', labelNames: ['signal'], registers,
    collect() {
      this.reset();
      for (const [signal, r] of Object.entries(pressure()?.signals() ?? {})) this.set({ signal }, rank(r.level));
    },
  });
  return new Counter({ name: 'ichidan_admission_level_changes_total', help: 'Changes of the pressure level, by the level entered', labelNames: ['to'], registers });
}

/** The cluster's gauges and counters (read from the link, the gate and the registry when collected). */
function clusterMetrics(registers: Registry[], cluster: () => Cluster | null, queue: Pick<Queue, 'gate'>): void {
  new Gauge({
    name: 'ichidan_cluster_redis_up', help: '1 while the cluster\'s Redis answers (0: limits are decided locally)', registers,
    collect() { const c = cluster(); if (c) this.set(c.link.up ? 1 : 0); },
  });
  new Counter({
    name: 'ichidan_cluster_redis_commands_total', help: 'Redis commands this node sent (leases, rates, state, registry)', registers,
    collect() { const c = cluster(); if (c) { this.reset(); this.inc(c.link.commands); } },
  });
  new Counter({
    name: 'ichidan_cluster_fallback_decisions_total', help: 'Leases and rates decided locally because Redis was away or slow', registers,
    collect() { const c = cluster(); if (c) { this.reset(); this.inc(c.link.fallbacks + (queue.gate?.fallbackDecisions ?? 0)); } },
  });
  new Gauge({
    name: 'ichidan_cluster_leases_held', help: 'Connection leases this node holds at destination sites', registers,
    collect() { if (queue.gate) this.set(queue.gate.holdings().reduce((n, h) => n + h.held, 0)); },
  });
  new Gauge({
    name: 'ichidan_cluster_nodes_live', help: 'Live nodes in the cluster registry (this one included)', registers,
    collect() { const c = cluster(); if (c) this.set(c.nodes.liveNodes); },
  });
}

/** The shared state's counters (mta-shared.ts), read when collected. */
function sharedStateMetrics(registers: Registry[], shared: NonNullable<MetricSources['shared']>): void {
  new Counter({
    name: 'ichidan_cluster_state_changes_total', help: 'Shared-state changes this node published, and applied from other nodes', labelNames: ['direction'], registers,
    collect() {
      const state = shared();
      this.reset();
      if (!state) return;
      this.inc({ direction: 'published' }, state.published);
      this.inc({ direction: 'applied' }, state.applied);
    },
  });
  new Counter({
    name: 'ichidan_cluster_state_reloads_total', help: 'Times this node loaded the whole shared state (first join, or the stream no longer reached back)', registers,
    collect() {
      this.reset();
      this.inc(shared()?.reloads ?? 0);
    },
  });
  new Gauge({
    name: 'ichidan_cluster_state_unpublished', help: 'Changes made here while Redis was away, waiting to be shared', registers,
    collect() { this.set(shared()?.outboxed ?? 0); },
  });
  new Gauge({
    name: 'ichidan_cluster_state_synced', help: '1 while this node is in step with the shared state in Redis', registers,
    collect() { this.set(shared()?.synced ? 1 : 0); },
  });
}

/** The DNS responder's answers, read when collected (a responder restarted by a reload counts from zero again). */
function dnsMetrics(registers: Registry[], dns: NonNullable<MetricSources['dns']>): void {
  new Counter({
    name: 'ichidan_dns_answers_total', help: 'DNS responder answers by mode (normal, high load) and mechanism (primary, known, overflow, servfail, host, zone, nodata, nxdomain, refused, formerr, notimp, badvers, ratelimited; dropped: nothing sent)', labelNames: ['mode', 'mechanism'], registers,
    collect() {
      const responder = dns();
      this.reset();
      for (const a of responder?.answers() ?? []) this.inc({ mode: a.mode, mechanism: a.mechanism }, a.count);
    },
  });
}
