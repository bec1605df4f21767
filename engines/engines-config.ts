/*
 * The `engines:` and `scanning:` sections of the configuration, and the per-tenant `scanning`
 * override.
 *
 * `engines` is a list; each entry's `type` picks its adapter (the registry, engines-registry.ts)
 * and its options schema, so a misspelt key is an error naming e.g. `engines.1.servers`.
 * `scanning` holds the verdict policy (engines-verdict.ts): what an infection does, how spam
 * engines combine, the quorum per kind. A tenant may name the engines its mail goes through and
 * override any verdict setting.
 */
import { z } from 'zod';
import { duration } from '../base/base-config.js';
import { engineName } from './engines-common.js';
import { definitionOf, ENGINE_DEFINITIONS } from './engines-registry.js';

const definitions = ENGINE_DEFINITIONS.map((d) => d.schema);
export const engineSchema = z.discriminatedUnion('type', definitions as unknown as [typeof definitions[number], ...typeof definitions]);
export type EngineConfig = z.output<typeof engineSchema>;

const level = z.number().nonnegative();
const quorum = z.number().int().nonnegative();

/**
 * Spam thresholds are in normalised units: each engine's score divided by its own spam
 * threshold (spamd's required score, rspamd's reject score), so 1.0 means "as spammy as this
 * engine's own line". In `score` mode the weighted mean of the engines' normalised scores is
 * compared; in a vote mode each engine votes for every level its own normalised score reaches,
 * and a level needs any / a majority / all of the engines that answered.
 */
const spamPolicy = {
  mode: z.enum(['score', 'any', 'majority', 'all']),
  /** Add X-Spam-Flag: YES at or above this. */
  tag: level,
  /** Accept, but hold in quarantine at or above this (null: never). */
  quarantine: level.nullable(),
  /** Refuse with 550 5.7.1 at or above this (null: never). */
  reject: level.nullable(),
  /** Put this in front of the Subject of mail judged spam but delivered, e.g. "[SPAM]" (null: leave it). */
  subjectTag: z.string().min(1).max(64).regex(/^[^\x00-\x1f\x7f]*$/, 'text without control characters').nullable(),
};

const quorumPolicy = { av: quorum, spam: quorum, auth: quorum, policy: quorum };

export const scanningSchema = z.strictObject({
  /** What an AV hit does: refuse the message (550 5.7.1) or accept it into quarantine. */
  virus: z.enum(['reject', 'quarantine']).default('reject'),
  /**
   * What a message that cannot be fully checked does: one whose structure is past Ichidan's own
   * limits (`limits.maxHeaderSize`, `maxHeaderFields`, `maxMimeDepth`, `maxMimeParts`), or one an
   * engine could not judge because of the message (MIME it cannot parse, clamd's
   * Heuristics.Limits.Exceeded.* for nesting, file count or scan size, the attachment policy's
   * deadline), or one larger than an engine's maxSize under `oversize: unscannable`. reject: 550; quarantine:
   * accepted and held. Never passed as clean.
   */
  unscannable: z.enum(['reject', 'quarantine']).default('reject'),
  spam: z.strictObject({
    mode: spamPolicy.mode.default('score'),
    tag: spamPolicy.tag.default(0.5),
    quarantine: spamPolicy.quarantine.default(null),
    reject: spamPolicy.reject.default(1),
    subjectTag: spamPolicy.subjectTag.default(null),
  }).prefault({}),
  /**
   * Engines of each kind that must have answered (size-skipped engines excepted). With fewer, the
   * message follows `belowQuorum`. The default asks for one AV answer whenever AV engines exist.
   */
  quorum: z.strictObject({
    av: quorumPolicy.av.default(1),
    spam: quorumPolicy.spam.default(0),
    auth: quorumPolicy.auth.default(0),
    policy: quorumPolicy.policy.default(0),
  }).prefault({}),
  /** tempfail: 451 4.7.1, the client retries; accept: deliver, marked X-Ichidan-Unscanned. */
  belowQuorum: z.enum(['tempfail', 'accept']).default('tempfail'),
  /** Per-message scan records older than this are deleted. Daily engine statistics are kept. */
  recordRetention: duration.prefault('30d'),
});
export type ScanningConfig = z.output<typeof scanningSchema>;

/** A tenant's override: the engines its mail goes through, and any verdict setting. */
export const tenantScanningSchema = z.strictObject({
  /** Names from `engines` (default: all of them). */
  engines: z.array(engineName).optional(),
  virus: z.enum(['reject', 'quarantine']).optional(),
  unscannable: z.enum(['reject', 'quarantine']).optional(),
  spam: z.strictObject({
    mode: spamPolicy.mode.optional(),
    tag: spamPolicy.tag.optional(),
    quarantine: spamPolicy.quarantine.optional(),
    reject: spamPolicy.reject.optional(),
    subjectTag: spamPolicy.subjectTag.optional(),
  }).optional(),
  quorum: z.strictObject({
    av: quorumPolicy.av.optional(),
    spam: quorumPolicy.spam.optional(),
    auth: quorumPolicy.auth.optional(),
    policy: quorumPolicy.policy.optional(),
  }).optional(),
  belowQuorum: z.enum(['tempfail', 'accept']).optional(),
});
export type TenantScanningConfig = z.output<typeof tenantScanningSchema>;

/** The verdict policy a tenant's mail is judged by: the global one with the tenant's overrides. */
export type VerdictPolicy = Omit<ScanningConfig, 'recordRetention'>;

export function tenantPolicy(global: ScanningConfig, override: TenantScanningConfig | undefined): VerdictPolicy {
  const { recordRetention: _unused, ...base } = global;
  if (!override) return base;
  return {
    virus: override.virus ?? base.virus,
    unscannable: override.unscannable ?? base.unscannable,
    spam: { ...base.spam, ...definedOnly(override.spam) },
    quorum: { ...base.quorum, ...definedOnly(override.quorum) },
    belowQuorum: override.belowQuorum ?? base.belowQuorum,
  };
}

function definedOnly<T extends object>(o: T | undefined): Partial<T> {
  if (!o) return {};
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;
}

/**
 * Engines whose `maxSize` is below the largest message accepted (`limits.maxMessageSize`): mail in
 * between is refused (or quarantined) as not fully scanned, or, for an AV or policy engine under
 * `oversize: skip`, not checked by it at all. Both are worth an operator's second look; a spam or
 * authentication engine skipping large mail is ordinary and not reported. One line per engine,
 * naming the keys.
 */
export function oversizeWarnings(engines: readonly EngineConfig[], maxMessageSize: number): string[] {
  const out: string[] = [];
  engines.forEach((e, i) => {
    if (e.maxSize >= maxMessageSize) return;
    const gap = `engines[${i}].maxSize (${e.maxSize} bytes) is below limits.maxMessageSize (${maxMessageSize} bytes)`;
    if (e.oversize === 'unscannable') {
      out.push(`${gap}: larger messages are judged not fully scanned by "${e.name}" (scanning.unscannable); raise engines[${i}].maxSize or lower limits.maxMessageSize`);
    } else if (definitionOf(e.type).kind === 'av' || definitionOf(e.type).kind === 'policy') {
      out.push(`${gap}: larger messages are not checked by "${e.name}" at all (engines[${i}].oversize: skip)`);
    }
  });
  return out;
}

/** What engines/ reads of the whole configuration (a whole `Config` is one). */
export interface EnginesConfig {
  hostname: string;
  /** Part of what makes two snapshots' engines the same: an engine that resolves names keeps its resolver's settings. */
  dns: unknown;
  engines: EngineConfig[];
  scanning: ScanningConfig;
  tenants: Record<string, { scanning?: TenantScanningConfig }>;
}
