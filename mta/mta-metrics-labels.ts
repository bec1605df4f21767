/*
 * Label values the metrics may carry: each set bounded, whatever clients and destinations send.
 *
 * Takes: a tenant name (from a recipient row or a transaction), a destination site's key (from the
 *   scheduler), an SMTP reply Ichidan gave (base/base-reply.ts).
 * Gives:
 *   tenantLabel   a configured tenant, `_relay`, or `_other` (a tenant no longer configured,
 *                 rows from an older config): at most the configured tenants plus two values
 *   SiteLabels    a named site (`site:NAME`, bounded by the config) as it is; other sites (keyed
 *                 by their mail hosts, as many as the destinations mail goes to) as they are
 *                 until `SITE_LABELS_MAX` of them have been seen, then `_other`
 *   replyReason   the name of the reply in the catalogue (`REPLIES`: relayDenied, tooManyConnections,
 *                 storageFull, …) — a fixed set —; `scan` for an engine verdict's own reply;
 *                 `structure` for a MIME structure limit; `other`
 * Settings: tenants (the configured names).
 */
import { REPLIES, type SmtpReply } from '../base/base-reply.js';
import { RELAY_TENANT } from './ingress/ingress-policy.js';

/** How many distinct unnamed sites get their own label before the rest count as `_other`. */
export const SITE_LABELS_MAX = 50;
export const OTHER = '_other';

export function tenantLabel(tenants: Readonly<Record<string, unknown>>, tenant: string | null | undefined): string {
  if (!tenant) return RELAY_TENANT;
  return Object.hasOwn(tenants, tenant) || tenant === RELAY_TENANT ? tenant : OTHER;
}

export class SiteLabels {
  readonly #seen = new Set<string>();

  constructor(private readonly max = SITE_LABELS_MAX) {}

  label(site: string): string {
    if (site.startsWith('site:') || this.#seen.has(site)) return site;
    if (this.#seen.size >= this.max) return OTHER;
    this.#seen.add(site);
    return site;
  }
}

const CATALOGUE = new Map<string, string>();
for (const [name, r] of Object.entries(REPLIES)) CATALOGUE.set(`${r.code} ${r.enhanced} ${r.text}`, name);

export function replyReason(reply: SmtpReply, scanned = false): string {
  const named = CATALOGUE.get(`${reply.code} ${reply.enhanced} ${reply.text}`);
  if (named) return named;
  if (scanned) return 'scan';
  // structureRefused: the message's MIME structure passed a limit (accept-structure.ts).
  return reply.enhanced === '5.6.0' ? 'structure' : 'other';
}
