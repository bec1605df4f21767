/*
 * The settings of recipient validation at RCPT (ingress-recipients.ts), under each tenant:
 * `tenants.<t>.recipients`, with per-domain rules in `recipients.domains.<domain>` that replace
 * the tenant's rule for that domain. Postfix's counterparts: relay_recipient_maps (the list and
 * the file, "@domain" for a whole domain), reject_unverified_recipient with address_verify_*
 * (the probe and its cache), unverified_recipient_defer_code (`unavailable`).
 */
import { z } from 'zod';
import { duration, port } from '../../base/base-config.js';

/** An entry of `list` or of the file: "user@example.com", or "@example.com" for every user of the domain. */
export const RECIPIENT_ENTRY = /^[^@\s]*@[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*$/i;

const verify = z.strictObject({
  /** The mailbox server (Dovecot's LMTP, a final SMTP hop): an address or a host name. */
  host: z.string().min(1),
  /** Default 24 for LMTP, 25 for SMTP. */
  port: port.optional(),
  protocol: z.enum(['lmtp', 'smtp']).default('lmtp'),
  /** How long a 250 to the probe's RCPT is believed (Postfix: address_verify_positive_expire_time). */
  positiveTtl: duration.prefault('1h'),
  /** How long a 5xx is believed: a user created since waits at most this long. */
  negativeTtl: duration.prefault('5m'),
  /** The whole probe (connect, greeting, LHLO/EHLO, MAIL, RCPT); past it the check is unavailable. */
  timeout: duration.prefault('10s'),
  /** The probe's MAIL FROM (default the null sender, so nothing can bounce to anyone). */
  sender: z.string().regex(/^$|^[^@\s<>]+@[^@\s<>]+$/, 'an address such as "verify@example.com", or "" for the null sender').default(''),
  /** Most answers kept in memory; the least recently used go first. */
  cacheSize: z.number().int().positive().default(100_000),
});

const rule = {
  /** Known recipients: "user@domain", or "@domain" for all of a domain's users. */
  list: z.array(z.string().regex(RECIPIENT_ENTRY, 'an address such as "user@example.com", or "@example.com" for a whole domain')).optional(),
  /** A file of such entries, one a line ("#" starts a comment); read again when it changes and on reload. */
  file: z.string().min(1).optional(),
  /**
   * Characters that start an address extension (Postfix's recipient_delimiter, e.g. "+"): an
   * address not listed as given is looked up again without it ("ann+news@" as "ann@"). The probe
   * always asks for the address as given.
   */
  delimiter: z.string().regex(/^[^@\s\w"<>]{1,8}$/, 'one to eight characters such as "+" or "+-" (not letters, digits, "@" or spaces)').default(''),
  /** Every local part is accepted (the domain has a catch-all mailbox): nothing is checked. */
  catchAll: z.boolean().default(false),
  /** Ask the mailbox server with a real RCPT (after the list and the file said no). */
  verify: verify.optional(),
  /** When the check cannot be made (probe failed or timed out, file never read): 450 4.1.1 or 451 4.3.0. */
  unavailable: z.enum(['tempfail-450', 'tempfail-451']).default('tempfail-450'),
};

const ruleSchema = z.strictObject(rule);

export const recipientsSchema = z.strictObject({
  ...rule,
  /** Rules for single domains of the tenant; each replaces the tenant's rule for its domain. */
  domains: z.record(z.string().transform((d) => d.toLowerCase().replace(/\.$/, '')), ruleSchema).default({}),
});

export type RecipientRule = z.output<typeof ruleSchema>;
export type RecipientsConfig = z.output<typeof recipientsSchema>;
export type VerifyConfig = z.output<typeof verify>;

/** A rule with nothing to check by would refuse everyone: it is a mistake. */
export function isEmptyRule(r: RecipientRule): boolean {
  return !r.catchAll && r.list === undefined && r.file === undefined && r.verify === undefined;
}
