/*
 * The egress control's part in the shared state: this node's holds, suspensions and pauses (and
 * their undos) go to the other nodes, theirs are put in force here.
 *
 * Takes: the shared state (cluster-state.ts) and the egress control (queue-egress-control.ts).
 * Gives: `EgressSharing` to the control (what it records is published; Redis away: queued and
 *   published when Redis returns) and a `StateApplier` to the shared state: an `event` change is
 *   adopted (recorded under its uid, its block put in force), an `undo` lifts the event by uid;
 *   after a gap the events in force here that are no longer in the desired state are lifted and
 *   the missing ones adopted. Events made outside a cluster (no origin) stay this node's alone.
 */
import type { EgressControl, EgressSharing } from '../queue-egress-control.js';
import type { EgressEvent, NewEgressEvent } from '../queue-records-egress.js';
import type { ClusterState, SharedEvent, StateApplier, StateChange } from './cluster-state.js';

export class EgressShare implements EgressSharing, StateApplier {
  constructor(private readonly state: ClusterState, private readonly control: EgressControl) {}

  get node(): string {
    return this.state.node;
  }

  recorded(event: NewEgressEvent & { uid: string; origin: string }): void {
    void this.state.publish({ type: 'event', uid: event.uid, event: shared(event) });
  }

  undone(uid: string, at: number, by: string): void {
    void this.state.publish({ type: 'undo', uid, at, by });
  }

  async apply(change: StateChange): Promise<void> {
    if (change.type === 'event') await this.control.adopt({ ...change.event, uid: change.uid });
    else if (change.type === 'undo') await this.control.undoShared(change.uid, change.by, change.at);
  }

  async reload(items: StateChange[]): Promise<void> {
    const wanted = new Map<string, SharedEvent>();
    for (const c of items) if (c.type === 'event') wanted.set(c.uid, c.event);
    for (const e of this.control.sharedInForce()) {
      if (!wanted.has(e.uid!)) await this.control.undoShared(e.uid!, 'cluster (no longer in force there)');
    }
    for (const [uid, event] of wanted) await this.control.adopt({ ...event, uid });
  }

  inForce(): StateChange[] {
    return this.control.sharedInForce().map((e) => ({ type: 'event' as const, uid: e.uid!, event: shared(e) }));
  }
}

function shared(e: NewEgressEvent | EgressEvent): SharedEvent {
  return {
    at: e.at, kind: e.kind, actor: e.actor, tenant: e.tenant, site: e.site, source: e.source, until: e.until,
    reason: e.reason, detail: e.detail, block_id: e.block_id, origin: e.origin!,
  };
}
