/*
 * This node's part in a cluster: the Redis link and the node registry, built when `cluster.redis`
 * is set (null otherwise: the node shares nothing and behaves exactly as a single process).
 *
 * Takes: the config, the queue (for the load report), the bound listeners (where peers reach it).
 * Gives: `Cluster` — `link` (queue/cluster/cluster-link.ts), `nodes` (the registry), `close()`.
 * Settings: cluster.*
 */
import { hostname } from 'node:os';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import type { Logger } from 'pino';
import type { Queue, SharedLimits } from '../queue/index.js';
import { ClusterLink, nodeName } from '../queue/cluster/cluster-link.js';
import { NodeRegistry, type NodeReport } from '../queue/cluster/cluster-nodes.js';
import type { Config } from './mta-config-schema.js';

export interface ClusterDeps {
  /** The node's queue, once open (the cluster is joined before it, so its first deliveries are already shared). */
  queue: () => Queue | null;
  /** Where this node takes mail from peers (its first MX listener), once bound. */
  smtp: () => { address: string; port: number } | undefined;
  draining: () => boolean;
}

const COUNT_EVERY_MS = 10_000;

export class Cluster {
  readonly link: ClusterLink;
  readonly nodes: NodeRegistry;
  readonly #delay = monitorEventLoopDelay({ resolution: 20 });
  readonly #startedAt = Date.now();
  #counts: { at: number; value: Record<string, number> } = { at: 0, value: {} };

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

  async close(): Promise<void> {
    this.nodes.stop();
    this.#delay.disable();
    await this.link.close();
  }

  #report(): NodeReport {
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
    this.#delay.reset();
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
      leases: queue?.gate?.holdings().reduce((n, h) => n + h.held, 0) ?? 0,
      loopDelayMs: Math.round(delay * 10) / 10,
      rssMb: Math.round(process.memoryUsage.rss() / 1048576),
    };
  }
}
