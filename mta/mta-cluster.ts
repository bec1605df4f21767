/*
 * This node's part in a cluster: the Redis link and the node registry, built when `cluster.redis`
 * is set (null otherwise: the node shares nothing and behaves exactly as a single process).
 *
 * Takes: the config, the queue (for the load report), the bound listeners (where peers reach it).
 * Gives: `Cluster` — `link` (queue/cluster/cluster-link.ts), `nodes` (the registry), `close()`;
 *   `status()` for `ichidan cluster status`: every node the registry knows, this node's own load
 *   as of now, and Redis's health (connected, a PING's round trip, the server's version and used
 *   memory from INFO); `localStatus()` the same for a node without Redis (only itself).
 * Settings: cluster.*
 */
import { hostname } from 'node:os';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import type { Logger } from 'pino';
import type { Queue, SharedLimits } from '../queue/index.js';
import { ClusterLink, nodeName, redact } from '../queue/cluster/cluster-link.js';
import { NodeRegistry, type NodeReport, type NodeView } from '../queue/cluster/cluster-nodes.js';
import type { Config } from './mta-config-schema.js';

export interface ClusterDeps {
  /** The node's queue, once open (the cluster is joined before it, so its first deliveries are already shared). */
  queue: () => Queue | null;
  /** Where this node takes mail from peers (its first MX listener), once bound. */
  smtp: () => { address: string; port: number } | undefined;
  draining: () => boolean;
  /** This node's pressure level (admission/admission-pressure.ts), which peers and the DNS responder read. */
  level?: () => 'normal' | 'busy' | 'overload';
}

const COUNT_EVERY_MS = 10_000;

export interface RedisHealth {
  /** The Redis URL, password hidden. */
  url: string;
  connected: boolean;
  /** A PING's round trip, ms; null when it got no answer. */
  rttMs: number | null;
  version: string | null;
  usedMemoryBytes: number | null;
  usedMemoryHuman: string | null;
}

/** What `ichidan cluster status` shows; `problem` is set when the node is not clustered or Redis is away. */
export interface ClusterStatus {
  clustered: boolean;
  node: string;
  /** This node now (its loop delay unknown without the cluster's monitor). */
  local: Omit<NodeReport, 'loopDelayMs'> & { loopDelayMs: number | null };
  redis: RedisHealth | null;
  /** Every node the registry knows; null when Redis could not be asked. */
  nodes: NodeView[] | null;
  problem: string | null;
}

/** The same status for a node without cluster.redis: only itself. */
export function localStatus(config: Config, deps: ClusterDeps): ClusterStatus {
  const node = nodeName(config.cluster, config.dataDir);
  const q = deps.queue();
  let queue: Record<string, number> = {};
  try {
    queue = q?.store.openCounts() ?? {};
  } catch {
    /* the database is closing */
  }
  return {
    clustered: false,
    node,
    local: {
      node, host: hostname(), pid: process.pid, smtp: deps.smtp(), startedAt: 0, active: q?.scheduler.active ?? 0, waiting: q?.scheduler.waiting ?? 0,
      queue, draining: deps.draining(), level: deps.level?.(), loopDelayMs: null, rssMb: Math.round(process.memoryUsage.rss() / 1048576), leases: 0,
    },
    redis: null,
    nodes: null,
    problem: 'not clustered: cluster.redis is not set, so this node has no peers',
  };
}

/** "key:value" lines of a Redis INFO reply. */
function infoField(info: string, key: string): string | null {
  const m = new RegExp(`^${key}:(.*)$`, 'm').exec(info);
  return m ? m[1].trim() : null;
}

export class Cluster {
  readonly link: ClusterLink;
  readonly nodes: NodeRegistry;
  readonly #delay = monitorEventLoopDelay({ resolution: 20 });
  readonly #startedAt = Date.now();
  #counts: { at: number; value: Record<string, number> } = { at: 0, value: {} };
  /** The registry as last read for `liveNodes()`, and whether a read is under way. */
  #seen: { at: number; nodes: NodeView[]; reading: boolean } = { at: 0, nodes: [], reading: false };

  private constructor(config: Config & { cluster: { redis: string } }, private readonly deps: ClusterDeps, log: Logger) {
    this.link = new ClusterLink(config.cluster, nodeName(config.cluster, config.dataDir), log);
    this.nodes = new NodeRegistry(this.link, () => this.#report());
  }

  /** The cluster part of a node, or null when `cluster.redis` is not set. */
  static async join(config: Config, deps: ClusterDeps, log: Logger): Promise<Cluster | null> {
    if (config.cluster.redis === undefined) return null;
    const cluster = new Cluster(config as Config & { cluster: { redis: string } }, deps, log);
    cluster.#delay.enable();
    await cluster.link.connect();
    cluster.nodes.start();
    return cluster;
  }

  /** What the queue needs to share its limits (queue/cluster/cluster-gate.ts). */
  get shared(): SharedLimits {
    return { link: this.link, nodes: () => this.nodes.liveNodes };
  }

  get node(): string {
    return this.link.node;
  }

  /**
   * The live nodes as last read from the registry, at once (the DNS responder answers from it);
   * read again in the background once older than a heartbeat. Empty until the first read ends.
   */
  liveNodes(): NodeView[] {
    const seen = this.#seen;
    if (!seen.reading && Date.now() - seen.at > this.link.config.heartbeat) {
      seen.reading = true;
      void this.nodes.list().then((nodes) => {
        if (nodes) this.#seen = { at: Date.now(), nodes, reading: false };
      }, () => undefined).finally(() => { this.#seen.reading = false; });
    }
    return this.#seen.nodes.filter((n) => n.alive);
  }

  async close(): Promise<void> {
    this.nodes.stop();
    this.#delay.disable();
    await this.link.close();
  }

  /** Every node the registry knows, this node as of now, and Redis's health. */
  async status(): Promise<ClusterStatus> {
    const local = this.#report(false);
    const health = await this.link.call(3, async (r) => {
      const t0 = performance.now();
      await r.ping();
      const rttMs = Math.round((performance.now() - t0) * 100) / 100;
      const info = await r.info('server') + '\n' + await r.info('memory');
      return { rttMs, info };
    });
    const redis: RedisHealth = {
      url: redact(this.link.config.redis),
      connected: this.link.up && health !== undefined,
      rttMs: health?.rttMs ?? null,
      version: health ? infoField(health.info, 'valkey_version') ?? infoField(health.info, 'redis_version') : null,
      usedMemoryBytes: health && infoField(health.info, 'used_memory') !== null ? Number(infoField(health.info, 'used_memory')) : null,
      usedMemoryHuman: health ? infoField(health.info, 'used_memory_human') : null,
    };
    const nodes = redis.connected ? await this.nodes.list() ?? null : null;
    const problem = nodes === null ? `Redis is not reachable at ${redis.url}: only this node is shown` : null;
    return { clustered: true, node: this.node, local, redis, nodes, problem };
  }

  /** This node's report; `heartbeat`: the loop-delay window restarts (each heartbeat reports its own). */
  #report(heartbeat = true): NodeReport {
    const now = Date.now();
    const queue = this.deps.queue();
    if (queue && now - this.#counts.at >= COUNT_EVERY_MS) {
      try {
        this.#counts = { at: now, value: queue.store.openCounts() };
      } catch {
        /* the database is closing: keep the last counts */
      }
    }
    const delay = this.#delay.percentile(99) / 1e6;
    if (heartbeat) this.#delay.reset();
    return {
      node: this.link.node,
      host: hostname(),
      pid: process.pid,
      smtp: this.deps.smtp(),
      startedAt: this.#startedAt,
      active: queue?.scheduler.active ?? 0,
      waiting: queue?.scheduler.waiting ?? 0,
      queue: this.#counts.value,
      draining: this.deps.draining(),
      level: this.deps.level?.(),
      leases: queue?.gate?.holdings().reduce((n, h) => n + h.held, 0) ?? 0,
      loopDelayMs: Math.round(delay * 10) / 10,
      rssMb: Math.round(process.memoryUsage.rss() / 1048576),
    };
  }
}
