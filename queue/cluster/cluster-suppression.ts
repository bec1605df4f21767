/*
 * The tenants' suppression lists shared by the nodes of a cluster: an entry one node learns from a
 * hard bounce, or that an operator adds, imports or removes there, is put in force on every node
 * (each keeps the list in its own queue database, so RCPT and delivery read it locally and a
 * node whose Redis is away still stops what it knew).
 *
 * Takes: the shared state (cluster-state.ts: a change per entry, `suppress:<tenant>:<address>`,
 *   lapsing at the entry's expiry), the queue's suppressions (queue-suppression.ts).
 * Gives: the applier: another node's entries written here (never published again); after a gap,
 *   the whole desired state put in force (entries the cluster no longer has are removed); what
 *   this node has, to seed a Redis that lost it.
 */
import type { Suppressions } from '../queue-suppression.js';
import { suppressionKey, type SuppressionEntry } from '../queue-suppression-sql.js';
import type { ClusterState, StateApplier, StateChange } from './cluster-state.js';

export class SuppressionShare implements StateApplier {
  constructor(state: ClusterState, private readonly suppressions: Suppressions) {
    suppressions.sharing = (tenant, address, entry) => void state.publish({ type: 'suppress', tenant, address: suppressionKey(address), entry });
  }

  async apply(change: StateChange): Promise<void> {
    if (change.type === 'suppress') await this.suppressions.applyShared([{ tenant: change.tenant, address: change.address, entry: change.entry }]);
  }

  async reload(items: StateChange[]): Promise<void> {
    const wanted = new Map<string, SuppressionEntry>();
    for (const c of items) if (c.type === 'suppress' && c.entry) wanted.set(`${c.tenant}\u0000${c.address}`, c.entry);
    const gone = this.suppressions.list({ expired: true }).filter((e) => !wanted.has(`${e.tenant}\u0000${e.address}`));
    await this.suppressions.applyShared([
      ...gone.map((e) => ({ tenant: e.tenant, address: e.address, entry: null })),
      ...[...wanted.values()].map((entry) => ({ tenant: entry.tenant, address: entry.address, entry })),
    ]);
  }

  inForce(): StateChange[] {
    return this.suppressions.list({}).map((entry) => ({ type: 'suppress' as const, tenant: entry.tenant, address: entry.address, entry }));
  }

  stop(): void {
    this.suppressions.sharing = null;
  }
}
