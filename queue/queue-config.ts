/*
 * queue/'s settings: `queue`, and each tenant's `egress` (its share, caps and source addresses), with
 * their defaults beside them; the root schema (mta/mta-config-schema.ts) assembles them.
 *
 * `QueueConfig` is the slice of the whole configuration queue/ reads (with delivery/'s, since the
 * queue opens the egress); a whole `Config` is one. `tenantPolicies` turns the tenants' egress
 * settings into what the scheduler reads.
 */
import { z } from 'zod';
import { duration, size } from '../base/base-config.js';
import type { EgressConfig } from '../delivery/delivery-config.js';
import type { Source, TenantPolicy } from './queue-scheduler.js';
import type { SuppressionConfig, SuppressionRule } from './queue-suppression-config.js';

export const queueSchema = z.strictObject({
  /** fsync spool files and the queue database before 250 (turn off only for throwaway tests). */
  fsync: z.boolean().default(true),
  /** Under load, queue-database commits happen at most this often, so more transactions share one fsync. */
  commitWindow: duration.prefault('2ms'),
  /** First retry delay; later ones grow by `retryFactor` up to `retryMax`, each with ±jitter. */
  retryInitial: duration.prefault('5m'),
  retryMax: duration.prefault('1h'),
  retryFactor: z.number().min(1).default(2),
  retryJitter: z.number().min(0).max(1).default(0.2),
  /** Give up after this long in the queue and bounce. */
  maxAge: duration.prefault('5d'),
  /** Send a delay notice once a recipient has waited this long (0 = never). */
  delayWarning: duration.default(0),
  /** Most deliveries in flight in all. */
  concurrency: z.number().int().positive().default(100),
  /** Most deliveries in flight per lane (tenant × destination domain). */
  laneConcurrency: z.number().int().positive().default(20),
  /**
   * New mail is refused with 452 4.3.1 (at MAIL FROM, and at DATA) while the spool's or the queue
   * database's filesystem has less free space than this plus the declared SIZE, so the queue can
   * always record outcomes. Default: the larger of 64MB and 1.5 × limits.maxMessageSize. 0: no check.
   */
  minFree: z.union([z.literal(0), size]).optional(),
  /**
   * Space held in dataDir/reserve and given back when the queue database cannot record an outcome or
   * a removal for want of space (made again once there is room). 0: none.
   */
  reserve: z.union([z.literal(0), size]).prefault('16MB'),
  /** Spool files set aside at startup that were never acknowledged (no 250 was sent) are removed after this long. */
  leftoverRetention: duration.prefault('1d'),
}).prefault({});

/** How this tenant's outbound mail is scheduled: its share, its caps, its source addresses. */
export const tenantEgressSchema = z.strictObject({
  /** Share of each site's capacity relative to the other tenants with mail for it (deficit round robin). */
  weight: z.number().min(0.01).max(1000).default(1),
  /** Most deliveries of this tenant in flight at once, over all destinations (default: no cap of its own). */
  concurrency: z.number().int().positive().optional(),
  /** Most messages this tenant may hand to destinations per hour (default: no cap). */
  messagesPerHour: z.number().int().positive().optional(),
  /** Name of a `delivery.sourcePools` entry: the local addresses (and HELO names) its mail leaves from. */
  sourcePool: z.string().min(1).optional(),
  /** Keep this tenant's mail queued without delivering it (as `ichidan tenants suspend` does, persistently). */
  suspended: z.boolean().default(false),
}).prefault({});

export type QueueSection = z.output<typeof queueSchema>;
export type TenantEgress = z.output<typeof tenantEgressSchema>;

/** What queue/ reads of the whole configuration. */
export interface QueueConfig extends EgressConfig, SuppressionConfig {
  dataDir: string;
  queue: QueueSection;
  tenants: Record<string, { egress: TenantEgress; suppression?: Partial<SuppressionRule> }>;
  limits: { maxMessageSize: number };
  scanning: { recordRetention: number };
}

const DEFAULT_SOURCE: Source = { address: null, helo: null };
export const DEFAULT_TENANT_POLICY: TenantPolicy = { weight: 1, sources: [DEFAULT_SOURCE] };

/** Each configured tenant's share, caps and source addresses, as the scheduler reads them. */
export function tenantPolicies(config: QueueConfig): Map<string, TenantPolicy> {
  const out = new Map<string, TenantPolicy>();
  for (const [name, t] of Object.entries(config.tenants)) {
    const pool = t.egress.sourcePool ? config.delivery.sourcePools[t.egress.sourcePool] : undefined;
    out.set(name, {
      weight: t.egress.weight,
      concurrency: t.egress.concurrency,
      messagesPerHour: t.egress.messagesPerHour,
      suspended: t.egress.suspended,
      sources: pool ? pool.map((p) => ({ address: p.address, helo: p.helo ?? null })) : [DEFAULT_SOURCE],
    });
  }
  return out;
}
