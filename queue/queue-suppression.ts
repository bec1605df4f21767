/*
 * Per-tenant suppression: a tenant's mail is no longer sent to an address that bounced for good
 * with a hard class (or that an operator put on its list), until the entry expires or is removed.
 * Never across tenants: every lookup is by (tenant, address).
 *
 * Takes: the queue store (entries are read on the main thread, written through its writer
 *   thread; hard bounces add theirs in the transaction of their outcome, queue-attempt.ts and
 *   queue-store-sql.ts), the config (each tenant's rule, queue-suppression-config.ts).
 * Gives:
 *   refusal     what RCPT answers for a suppressed recipient when the tenant's action is refuse
 *               (550 5.1.1 naming the suppression); mta/ingress asks it for submitted and relayed mail,
 *               the transparent proxy whatever the action (it relays live)
 *   stop        before a delivery, the outcomes of the recipients on their tenant's list (the same
 *               550 5.1.1, bounced without contacting the destination, whatever the action: mail
 *               queued before the entry, or accepted under action bounce)
 *   report      the log lines and the counter of what an attempt bounced, by class
 *   add, remove, list, prune   the operator's side (CLI and admin API) and the hourly clean-up
 *   sharing, applyShared       in a cluster, every entry made or removed here is shared, and the
 *               other nodes' are written here (cluster/cluster-suppression.ts)
 * Settings: suppression.*, tenants.*.suppression.
 */
import type { Logger } from 'pino';
import type { RecipientOutcome } from '../delivery/index.js';
import { recipientSuppressed, type SmtpReply } from '../base/base-reply.js';
import { suppressionRule, type SuppressionConfig, type SuppressionRule } from './queue-suppression-config.js';
import { readSuppressions, type SuppressionEntry, type SuppressionFilter } from './queue-suppression-sql.js';
import type { QueueStore, RecipientRow, RecipientUpdate, WriteOp } from './queue-store.js';

export type { SuppressionEntry, SuppressionFilter } from './queue-suppression-sql.js';

/** Expired entries are pruned this often (reads ignore them meanwhile). */
const PRUNE_INTERVAL_MS = 3_600_000;

/** "after a hard bounce on 2027-01-15 (bad-mailbox)", "by an operator on …", "by an import on …". */
export function suppressionWhy(entry: Pick<SuppressionEntry, 'source' | 'created_at' | 'class'>): string {
  const day = new Date(entry.created_at).toISOString().slice(0, 10);
  const how = entry.source === 'bounce' ? 'after a hard bounce' : entry.source === 'import' ? 'by an import' : 'by an operator';
  return `${how} on ${day} (${entry.class})`;
}

export class Suppressions {
  #prunedAt = 0;
  /** Called with each bounce's tenant and class (the metric). */
  onBounce: ((tenant: string, cls: string) => void) | null = null;
  /** In a cluster: called with every entry made (or removed: null) on this node. */
  sharing: ((tenant: string, address: string, entry: SuppressionEntry | null) => void) | null = null;

  constructor(private readonly store: QueueStore, private readonly config: () => SuppressionConfig & { hostname: string }, private readonly log: Logger) {}

  rule(tenant: string): SuppressionRule {
    return suppressionRule(this.config(), tenant);
  }

  /** The tenant's entry for this address in force now, if any. */
  lookup(tenant: string, address: string, now = Date.now()): SuppressionEntry | undefined {
    return this.store.suppressed(tenant, address, now);
  }

  /** At RCPT: the refusal for a suppressed recipient when the tenant's action is refuse (or `always`: a live relay); null otherwise. */
  refusal(tenant: string, address: string, now = Date.now(), always = false): SmtpReply | null {
    if (!always && this.rule(tenant).action !== 'refuse') return null;
    const entry = this.lookup(tenant, address, now);
    return entry ? recipientSuppressed(address, suppressionWhy(entry)) : null;
  }

  /** Before a delivery: the outcomes of the rows on their tenant's list, by recipient id. */
  stop(tenant: string, rows: RecipientRow[], now: number): Map<number, RecipientOutcome> {
    const out = new Map<number, RecipientOutcome>();
    for (const r of rows) {
      const entry = this.lookup(tenant, r.address, now);
      if (!entry) continue;
      const refused = recipientSuppressed(r.address, suppressionWhy(entry));
      out.set(r.id, { id: r.id, verdict: 'bounced', code: refused.code, status: refused.enhanced, reply: `${refused.code} ${refused.enhanced} ${refused.text}`, host: this.config().hostname });
    }
    return out;
  }

  /** The bounces of a committed attempt: logged with their class, counted, and the suppressions they made logged. */
  report(qid: string, tenant: string, rows: RecipientRow[], updates: RecipientUpdate[], now: number): void {
    const byId = new Map(rows.map((r) => [r.id, r]));
    for (const u of updates) {
      if (u.state !== 'bounced' || !u.bounceClass) continue;
      const rcpt = byId.get(u.id)?.address;
      this.log.info({ qid, tenant, rcpt, class: u.bounceClass, status: u.status, reply: u.reply }, 'bounced');
      this.onBounce?.(tenant, u.bounceClass);
      if (!u.suppress || rcpt === undefined) continue;
      this.log.info({ qid, tenant, rcpt, class: u.bounceClass, until: u.suppress.expiresAt }, 'recipient suppressed');
      this.sharing?.(tenant, rcpt, { tenant, address: rcpt, class: u.bounceClass, reason: u.suppress.reason, source: 'bounce', created_at: now, expires_at: u.suppress.expiresAt });
    }
  }

  /** Operator entries (add, import): written, resolves with how many. */
  async add(entries: SuppressionEntry[]): Promise<number> {
    const [n] = await this.store.write([{ op: 'suppressionAdd', entries }]) as [number];
    for (const e of entries) this.sharing?.(e.tenant, e.address, e);
    return n;
  }

  /** Resolves with whether there was an entry. */
  async remove(tenant: string, address: string): Promise<boolean> {
    const [n] = await this.store.write([{ op: 'suppressionRemove', tenant, address }]) as [number];
    if (n > 0) this.sharing?.(tenant, address, null);
    return n > 0;
  }

  /** Entries other nodes of the cluster made or removed: written here, not shared again. */
  async applyShared(changes: Array<{ tenant: string; address: string; entry: SuppressionEntry | null }>): Promise<void> {
    const ops: WriteOp[] = changes.map((c) => (c.entry ? { op: 'suppressionAdd', entries: [c.entry] } : { op: 'suppressionRemove', tenant: c.tenant, address: c.address }));
    if (ops.length > 0) await this.store.write(ops);
  }

  list(filter: SuppressionFilter, now = Date.now()): SuppressionEntry[] {
    return readSuppressions(this.store.db, filter, now);
  }

  /** The queue's sweep: expired entries removed hourly. */
  async tick(now: number): Promise<void> {
    if (now - this.#prunedAt < PRUNE_INTERVAL_MS) return;
    this.#prunedAt = now;
    await this.store.write([{ op: 'suppressionPrune', now }]);
  }
}
