/*
 * The cluster's nodes: each node writes what it is and how loaded it is every heartbeat, and
 * reads the others' (`ichidan cluster status`, the local fallback's share, drain's peers).
 *
 * Redis keys: `<prefix>:nodes` (hash: node → its last report, JSON) and `<prefix>:nodes:seen`
 * (sorted set: node → the Redis time of its last report, in ms). A node whose last report is
 * older than three leases' worth of time is listed as gone, and forgotten after a day.
 * Settings: cluster.heartbeat, cluster.leaseTtl.
 */
import type { ClusterLink } from './cluster-link.js';

export interface NodeReport {
  node: string;
  host: string;
  pid: number;
  /** Where peers hand this node mail (drain): its MX listener. */
  smtp?: { address: string; port: number };
  startedAt: number;
  /** Deliveries in flight and jobs waiting in the scheduler. */
  active: number;
  waiting: number;
  /** Messages in the queue by state. */
  queue: Record<string, number>;
  draining: boolean;
  /** The node's pressure level (absent from nodes that do not measure it). */
  level?: 'normal' | 'busy' | 'overload';
  /** Connection leases this node holds at destination sites. */
  leases: number;
  /** Event-loop delay p99, ms (how busy the process is). */
  loopDelayMs: number;
  rssMb: number;
}

export interface NodeView extends NodeReport {
  seenAt: number;
  alive: boolean;
}

const FORGET_AFTER_MS = 86_400_000;

export class NodeRegistry {
  #timer: NodeJS.Timeout | null = null;
  #lastLive = 1;
  /** The most live nodes counted lately: a Redis that restarted empty undercounts until every node reported again. */
  #most = { n: 1, at: 0 };

  constructor(private readonly link: ClusterLink, private readonly report: () => NodeReport) {}

  start(): void {
    const beat = () => { void this.beat(); };
    beat();
    this.#timer = setInterval(beat, this.link.config.heartbeat);
    this.#timer.unref();
  }

  stop(): void {
    if (this.#timer) clearInterval(this.#timer);
    this.#timer = null;
  }

  /** The number of live nodes (at least 1: this one): the most counted within three leases' time. */
  get liveNodes(): number {
    if (Date.now() - this.#most.at > 3 * this.link.config.leaseTtl) return this.#lastLive;
    return Math.max(this.#lastLive, this.#most.n);
  }

  /** Writes this node's report and counts the live nodes. */
  async beat(): Promise<void> {
    const report = JSON.stringify(this.report());
    const ttl = this.link.config.leaseTtl;
    const result = await this.link.call(5, async (r) => {
      const [[, time]] = (await r.multi().time().exec()) as [[null, [string, string]]];
      const now = Number(time[0]) * 1000 + Math.floor(Number(time[1]) / 1000);
      const res = await r.multi()
        .hset(this.link.key('nodes'), this.link.node, report)
        .zadd(this.link.key('nodes', 'seen'), now, this.link.node)
        .zcount(this.link.key('nodes', 'seen'), now - 3 * ttl, '+inf')
        .exec();
      return Number(res?.[2]?.[1] ?? 1);
    });
    if (result === undefined) return;
    this.#lastLive = Math.max(1, result);
    if (this.#lastLive >= this.#most.n || Date.now() - this.#most.at > 3 * this.link.config.leaseTtl) this.#most = { n: this.#lastLive, at: Date.now() };
  }

  /** Every node the cluster knows, this one included; undefined when Redis is away. */
  async list(): Promise<NodeView[] | undefined> {
    return this.link.call(4, async (r) => {
      const [[, time], [, reports], [, seen]] = (await r.multi()
        .time()
        .hgetall(this.link.key('nodes'))
        .zrange(this.link.key('nodes', 'seen'), 0, -1, 'WITHSCORES')
        .exec()) as [[null, [string, string]], [null, Record<string, string>], [null, string[]]];
      const now = Number(time[0]) * 1000 + Math.floor(Number(time[1]) / 1000);
      const seenAt = new Map<string, number>();
      for (let i = 0; i < seen.length; i += 2) seenAt.set(seen[i], Number(seen[i + 1]));
      const views: NodeView[] = [];
      const stale: string[] = [];
      for (const [node, json] of Object.entries(reports)) {
        const at = seenAt.get(node) ?? 0;
        if (now - at > FORGET_AFTER_MS) {
          stale.push(node);
          continue;
        }
        views.push({ ...(JSON.parse(json) as NodeReport), seenAt: at, alive: now - at <= 3 * this.link.config.leaseTtl });
      }
      if (stale.length > 0) await r.multi().hdel(this.link.key('nodes'), ...stale).zrem(this.link.key('nodes', 'seen'), ...stale).exec();
      return views.sort((a, b) => a.node.localeCompare(b.node));
    });
  }
}
