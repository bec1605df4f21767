/*
 * The operator's commands on queued recipients (the admin API, mta/admin/admin-queue.ts):
 * hold, purge, release, release one message (quarantine included), flush (retry now), and which
 * destination domains belong to a site. (A bounce now, with its notice: queue-operator-bounce.ts.)
 *
 * Takes: a recipient selection (one message, a tenant's, some domains'; entries set aside as
 *   corrupt are never selected), or a tenant and/or domain to release.
 * Gives: how many recipients changed. Held recipients stay queued until released; released ones
 *   are scheduled at once (`schedule`), and so are flushed ones (queued recipients due now, the
 *   wait for their next attempt cleared: a job due now wakes the scheduler); purged ones are removed without a notice (as postsuper -d
 *   does) and their message is swept when nothing of it is left open. A purge may use the space
 *   reserve: it is how an operator makes room on a full disk.
 * An attempt under way for a recipient held or purged meanwhile leaves it as the operator set it
 *   (the store's outcome update only touches queued rows).
 */
import type { Logger } from 'pino';
import { openDomains } from './queue-store-sql.js';
import type { QueueStore, RecipientRow, RecipientSelector } from './queue-store.js';

export class QueueOperator {
  /**
   * `schedule` puts released rows back into the scheduler; `siteOf` names a domain's site as
   * delivery would (null when the lookup fails).
   */
  constructor(
    private readonly store: QueueStore,
    private readonly log: Logger,
    private readonly schedule: (rows: RecipientRow[]) => void,
    private readonly siteOf: (domain: string) => Promise<string | null>,
  ) {}

  async hold(select: RecipientSelector): Promise<number> {
    const [n] = await this.store.write([{ op: 'holdRecipients', select, now: Date.now() }]) as [number];
    return n;
  }

  async purge(select: RecipientSelector, reason: string): Promise<number> {
    const [n] = await this.store.write([{ op: 'purgeRecipients', select, now: Date.now(), reason }], { essential: true }) as [number];
    if (n > 0) this.log.warn({ ...select, recipients: n, reason }, 'purged');
    return n;
  }

  /** Queued recipients due now, the wait for their next attempt cleared; resolves with how many. */
  async flush(select: RecipientSelector): Promise<number> {
    const [rows] = await this.store.write([{ op: 'flushRecipients', select, now: Date.now() }]) as [RecipientRow[]];
    this.schedule(rows);
    if (rows.length > 0) this.log.info({ ...select, recipients: rows.length }, 'flushed');
    return rows.length;
  }

  /** Held recipients back into the queue, by tenant and/or domain (quarantined messages excepted). */
  async release(tenant: string | null, domain: string | null): Promise<number> {
    const [released] = await this.store.write([{ op: 'release', tenant, domain, now: Date.now() }]) as [RecipientRow[]];
    this.schedule(released);
    return released.length;
  }

  /** One message's held recipients back into the queue; a quarantined message leaves quarantine. */
  async releaseMessage(id: string): Promise<number> {
    const [released] = await this.store.write([{ op: 'releaseMessage', id, now: Date.now() }]) as [RecipientRow[]];
    this.schedule(released);
    if (released.length > 0) this.log.info({ qid: id, recipients: released.length }, 'released');
    return released.length;
  }

  /** The destination domains with queued or held mail that belong to a site. */
  async domainsOfSite(site: string): Promise<string[]> {
    const domains = openDomains(this.store.db);
    const sites = await Promise.all(domains.map((d) => this.siteOf(d)));
    return domains.filter((_, i) => sites[i] === site);
  }
}
