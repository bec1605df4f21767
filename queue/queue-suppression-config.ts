/*
 * The suppression list's settings: `suppression` (the defaults for every tenant) and each tenant's
 * `suppression` (any of the same keys, overriding them), with their defaults beside them; the
 * root schema (mta/mta-config-schema.ts) assembles them. `suppressionRule` gives one tenant's.
 */
import { z } from 'zod';
import { duration } from '../base/base-config.js';
import { BOUNCE_CLASSES } from './queue-classify.js';

const classes = z.array(z.enum(BOUNCE_CLASSES));
/** refuse: at RCPT on submission and trusted relay, 550 5.1.1 naming the suppression; bounce: accepted, then bounced without contacting the destination. */
const action = z.enum(['refuse', 'bounce']);

export const suppressionSchema = z.strictObject({
  /** The classes of a permanent (5xx) failure that put the recipient on its tenant's list ([]: none). */
  classes: classes.default(['bad-mailbox', 'bad-domain']),
  /** How long an entry learnt from a bounce (or added without its own) stays; 0: until removed. */
  expire: duration.prefault('90d'),
  action: action.default('refuse'),
}).prefault({});

export const tenantSuppressionSchema = z.strictObject({
  classes: classes.optional(),
  expire: duration.optional(),
  action: action.optional(),
}).optional();

export type SuppressionSection = z.output<typeof suppressionSchema>;
export type SuppressionRule = SuppressionSection;

const DEFAULT_RULE: SuppressionRule = { classes: ['bad-mailbox', 'bad-domain'], expire: 90 * 86_400_000, action: 'refuse' };

/** What the suppression settings of a whole configuration look like to queue/ (sections may be absent in a partial config). */
export interface SuppressionConfig {
  suppression?: SuppressionSection;
  tenants: Record<string, { suppression?: Partial<SuppressionRule> }>;
}

/** The rule for one tenant: its own keys over the global ones. */
export function suppressionRule(config: SuppressionConfig, tenant: string): SuppressionRule {
  const own = config.tenants[tenant]?.suppression ?? {};
  const base = config.suppression ?? DEFAULT_RULE;
  return { classes: own.classes ?? base.classes, expire: own.expire ?? base.expire, action: own.action ?? base.action };
}
