/*
 * The operator and control state this node shares with the cluster, wired to what enforces it:
 * the egress control's events (queue/cluster/cluster-egress.ts), the engine host's switches (here:
 * engines/ cannot import queue/), quarantine releases (queue/cluster/cluster-release.ts), and the
 * throttle evidence attribution counts (queue/cluster/cluster-signals.ts), the tenants' suppression
 * entries (queue/cluster/cluster-suppression.ts).
 *
 * Takes: the node's cluster part (mta-cluster.ts), the queue, the engine host.
 * Gives: `SharedState.start(...)`; `release(id, by)` for the admin API; `close()`.
 * The desired state and its stream are queue/cluster/cluster-state.ts; the node's copy is kept in
 * the queue database (queue/cluster/cluster-state-sql.ts).
 * Settings: cluster.*, delivery.throttle.window.
 */
import type { Logger } from 'pino';
import type { EngineHost } from '../engines/index.js';
import type { Queue } from '../queue/index.js';
import { EgressShare } from '../queue/cluster/cluster-egress.js';
import { SharedRelease, type ReleaseAnswer } from '../queue/cluster/cluster-release.js';
import { ClusterSignals } from '../queue/cluster/cluster-signals.js';
import { SqliteStateCopy } from '../queue/cluster/cluster-state-sql.js';
import { ClusterState, type StateApplier, type StateChange } from '../queue/cluster/cluster-state.js';
import { SuppressionShare } from '../queue/cluster/cluster-suppression.js';
import type { Cluster } from './mta-cluster.js';

/** Engine switches: an operator's here are published, the other nodes' applied. */
class EngineSwitchShare implements StateApplier {
  constructor(private readonly state: ClusterState, private readonly host: EngineHost) {
    host.onOperatorSwitch = (engine, off) => void state.publish({ type: 'engine', engine, off });
  }

  async apply(change: StateChange): Promise<void> {
    if (change.type === 'engine') this.host.applySwitch(change.engine, change.off, 'another node of the cluster');
  }

  async reload(items: StateChange[]): Promise<void> {
    const wanted = new Map<string, { reason: string; at: number }>();
    for (const c of items) if (c.type === 'engine' && c.off) wanted.set(c.engine, c.off);
    for (const name of this.host.switches().keys()) if (!wanted.has(name)) this.host.applySwitch(name, null, 'the cluster no longer has it disabled');
    for (const [name, off] of wanted) this.host.applySwitch(name, off, 'the cluster');
  }

  inForce(): StateChange[] {
    return [...this.host.switches()].map(([engine, off]) => ({ type: 'engine' as const, engine, off }));
  }
}

export class SharedState {
  readonly state: ClusterState;
  readonly signals: ClusterSignals;
  readonly #release: SharedRelease;
  readonly #suppression: SuppressionShare;

  private constructor(cluster: Cluster, private readonly queue: Queue, engines: EngineHost, log: Logger) {
    this.state = new ClusterState(cluster.link, new SqliteStateCopy(queue.store), log);
    const egress = new EgressShare(this.state, queue.control);
    this.#release = new SharedRelease(this.state, (id) => queue.releaseMessage(id));
    this.state.use(egress);
    this.state.use(new EngineSwitchShare(this.state, engines));
    this.state.use(this.#release);
    this.#suppression = new SuppressionShare(this.state, queue.suppressions);
    this.state.use(this.#suppression);
    this.signals = new ClusterSignals(cluster.link, () => queue.control.throttleWindow);
    queue.control.sharing = egress;
    queue.control.evidence = this.signals;
  }

  static start(cluster: Cluster, queue: Queue, engines: EngineHost, log: Logger): SharedState {
    const shared = new SharedState(cluster, queue, engines, log);
    shared.state.start();
    shared.signals.start();
    return shared;
  }

  /** A message's release asked here: this node's, or the node's that holds it. */
  release(id: string, by: string): Promise<ReleaseAnswer> {
    return this.#release.release(id, by);
  }

  async close(): Promise<void> {
    this.signals.stop();
    await this.signals.flush().catch(() => undefined);
    this.queue.control.sharing = null;
    this.queue.control.evidence = null;
    this.#suppression.stop();
    await this.state.close();
  }
}
