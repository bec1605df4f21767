/*
 * Quarantine releases across the cluster: a quarantined (or held) message lives in one node's
 * spool, and an operator may ask any node to let it go.
 *
 * Takes: the shared state (cluster-state.ts) and this node's release of one message
 *   (queue-operator.ts through Queue.releaseMessage).
 * Gives: `release(id)`, for a message this node does not hold: a `release`
 *   change in the desired state, which the node holding the message acts on (at once, on catching
 *   up, or on its next start while the request lasts, a day), answering with a `released` change
 *   that removes the request. The asking node waits up to `waitMs` for that answer.
 */
import { expiresAt, type ClusterState, type StateApplier, type StateChange } from './cluster-state.js';

export type ReleaseAnswer =
  | { released: number; node: string }
  /** Handed to the cluster; no node answered in time (down, or the message is nowhere). */
  | { asked: true; shared: boolean };

export class SharedRelease implements StateApplier {
  constructor(private readonly state: ClusterState, private readonly releaseHere: (id: string) => Promise<number>, private readonly waitMs = 2000) {}

  /** Asks the cluster for a message this node does not hold. */
  async release(id: string, by: string): Promise<ReleaseAnswer> {
    const answer = this.state.waitFor((c) => c.type === 'released' && c.message === id, this.waitMs);
    const shared = await this.state.publish({ type: 'release', message: id, at: Date.now(), by });
    const got = await answer;
    return got?.type === 'released' ? { released: got.recipients, node: got.node } : { asked: true, shared };
  }

  async apply(change: StateChange): Promise<void> {
    // A request replayed after it lapsed is not acted on (the operator may have held the message again since).
    if (change.type !== 'release' || (expiresAt(change) ?? Infinity) <= Date.now()) return;
    const n = await this.releaseHere(change.message);
    if (n > 0) await this.state.publish({ type: 'released', message: change.message, node: this.state.node, recipients: n });
  }

  async reload(items: StateChange[]): Promise<void> {
    for (const c of items) await this.apply(c);
  }

  inForce(): StateChange[] {
    return [];
  }
}
