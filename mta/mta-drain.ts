/*
 * Draining a node (`ichidan node drain`): it stops taking mail and hands its queue to its peers,
 * so the machine can be taken out without losing or stranding anything; `undrain` takes mail
 * again.
 *
 * Takes: the node's cluster part (mta-cluster.ts: the registry names the peers), the queue (its
 *   transfer passes, queue/queue-transfer.ts), the config (cluster.secret), and the flag the
 *   listeners read (draining: new connections 421 4.3.2, transactions in progress finish).
 * Gives: `start()` — refused, changing nothing, when the node is not in a cluster (no
 *   cluster.redis), has no cluster.secret, cannot reach Redis, or has no live peer; else the node
 *   drains: a pass every PASS_EVERY_MS over the live peers (alive, not draining, not itself, with
 *   an SMTP listener); it is done (`finishedAt`) while no recipient is queued and no attempt runs
 *   (held ones stay: an operator releases or purges them), and passes go on in case a
 *   transaction under way at the start queues more. The node refuses mail until `stop()`.
 *   `status()` — progress: passes, recipients transferred, failed transactions, what is left, the
 *   peers of the last pass, why a pass could not run.
 * Settings: cluster.redis, cluster.secret (cluster.peers on the receiving side).
 */
import type { Logger } from 'pino';
import type { PeerAddress } from '../delivery/index.js';
import type { Queue } from '../queue/index.js';
import type { Cluster } from './mta-cluster.js';
import type { Config } from './mta-config-schema.js';

const PASS_EVERY_MS = 1000;

export interface DrainStatus {
  draining: boolean;
  startedAt: number | null;
  /** Set when the last queued recipient left (the node still refuses mail until undrained). */
  finishedAt: number | null;
  passes: number;
  transferred: number;
  failed: number;
  /** Recipients of this node's queue by state (queued, held). */
  remaining: Record<string, number>;
  peers: string[];
  /** Why the last pass could not run (no live peer, Redis away), or null. */
  problem: string | null;
}

export class DrainError extends Error {}

export interface DrainDeps {
  queue: Queue;
  cluster: () => Cluster | null;
  config: () => Config;
  setDraining: (on: boolean) => void;
  log: Logger;
}

export class Drain {
  #status: DrainStatus = { draining: false, startedAt: null, finishedAt: null, passes: 0, transferred: 0, failed: 0, remaining: {}, peers: [], problem: null };
  #timer: NodeJS.Timeout | null = null;
  #running: Promise<void> | null = null;
  /** Bumped by each start and stop, so a pass of an earlier drain does not carry on. */
  #generation = 0;

  constructor(private readonly deps: DrainDeps) {}

  status(): DrainStatus {
    return { ...this.#status, remaining: this.#remaining() };
  }

  /** Starts draining; throws a DrainError saying why not (nothing then changes). */
  async start(): Promise<DrainStatus> {
    if (this.#status.draining) return this.status();
    const cluster = this.deps.cluster();
    if (!cluster) throw new DrainError('this node is not in a cluster (cluster.redis is not set): there are no peers to drain to');
    if (this.deps.config().cluster.secret === undefined) throw new DrainError('cluster.secret is not set: peers would not take the transfer');
    const peers = await this.#peers(cluster);
    if (typeof peers === 'string') throw new DrainError(peers);
    this.deps.setDraining(true);
    const generation = ++this.#generation;
    this.#status = { draining: true, startedAt: Date.now(), finishedAt: null, passes: 0, transferred: 0, failed: 0, remaining: {}, peers: peers.map((p) => p.node), problem: null };
    this.deps.log.warn({ peers: this.#status.peers }, 'draining: new mail refused, the queue goes to the peers');
    this.#schedule(generation, 0);
    return this.status();
  }

  /** Takes mail again; a pass under way finishes its transactions. */
  async stop(): Promise<DrainStatus> {
    this.#generation++;
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = null;
    this.deps.setDraining(false);
    if (this.#status.draining) this.deps.log.warn({ transferred: this.#status.transferred }, 'undrained: taking mail again');
    this.#status.draining = false;
    await this.#running;
    return this.status();
  }

  /** Waits for a pass under way (shutdown). */
  async close(): Promise<void> {
    this.#generation++;
    if (this.#timer) clearTimeout(this.#timer);
    await this.#running;
  }

  #schedule(generation: number, delay: number): void {
    this.#timer = setTimeout(() => {
      this.#timer = null;
      this.#running = this.#pass(generation).finally(() => { this.#running = null; });
    }, delay);
    this.#timer.unref();
  }

  async #pass(generation: number): Promise<void> {
    const cluster = this.deps.cluster();
    const secret = this.deps.config().cluster.secret;
    if (generation !== this.#generation || !cluster) return;
    if (secret === undefined) {
      this.#status.problem = 'cluster.secret is no longer set';
    } else if (this.#queued() > 0) {
      const peers = await this.#peers(cluster);
      if (typeof peers === 'string') {
        this.#status.problem = peers;
      } else {
        this.#status.problem = null;
        this.#status.peers = peers.map((p) => p.node);
        try {
          // The status is the tally: `--status` sees each transaction as it ends.
          await this.deps.queue.transferToPeers(peers, { node: cluster.node, secret }, this.#status);
          this.#status.passes++;
        } catch (err) {
          this.deps.log.error({ err }, 'drain pass failed');
          this.#status.problem = `the last pass failed: ${(err as Error).message}`;
        }
      }
    }
    if (generation !== this.#generation) return;
    // Passes go on while draining: a transaction that was under way when the drain began may queue mail later.
    const empty = this.#queued() === 0 && this.deps.queue.scheduler.active === 0;
    if (empty && this.#status.finishedAt === null) {
      this.#status.finishedAt = Date.now();
      this.deps.log.warn({ transferred: this.#status.transferred, remaining: this.#remaining() }, 'drained: no queued mail left');
    } else if (!empty) {
      this.#status.finishedAt = null;
    }
    this.#schedule(generation, PASS_EVERY_MS);
  }

  /** The live peers, or why there are none. */
  async #peers(cluster: Cluster): Promise<PeerAddress[] | string> {
    const nodes = await cluster.nodes.list();
    if (nodes === undefined) return 'Redis is not reachable: the peers are unknown';
    const peers = nodes.filter((n) => n.alive && !n.draining && n.node !== cluster.node && n.smtp)
      .map((n) => ({ node: n.node, address: n.smtp!.address, port: n.smtp!.port }));
    return peers.length > 0 ? peers : 'no live peer to drain to (every other node is gone or draining)';
  }

  #remaining(): Record<string, number> {
    try {
      return this.deps.queue.store.openCounts();
    } catch {
      return this.#status.remaining;
    }
  }

  #queued(): number {
    return this.#remaining().queued ?? 0;
  }
}
