/*
 * Recipient validation at RCPT: an unknown user of a hosted domain is refused with 550 5.1.1 before
 * anything is accepted, so nothing is accepted and then bounced (no backscatter).
 *
 * Which rule: the one of the tenant hosting the recipient's domain (`tenants.<t>.recipients`), or
 * its `domains.<domain>` rule; a domain without a rule accepts every local part, as before. The
 * rule answers, in this order:
 *   postmaster@ the domain      accepted (RFC 5321 4.5.1: every domain has one)
 *   catchAll                    accepted
 *   `list`, then the file       accepted when the address or "@domain" is listed (ingress-recipients-list.ts)
 *   `verify`                    the mailbox server's answer to a probe, cached, shared in a cluster (ingress-recipients-verify.ts)
 *   otherwise                   550 5.1.1
 * and when it cannot answer (the probe failed or timed out; the file was never read and there is
 * no probe), `unavailable`: 450 4.1.1 or 451 4.3.0, so the client tries again later.
 * Applies to every client (an authenticated user writing to a hosted domain too), never to a
 * cluster transfer (the first node judged it). Built with each config snapshot (files read again
 * at reload); the probe's cache outlives snapshots.
 * Takes: the config, the process's RecipientVerifier. Gives: `check(address, domain)` → null or the
 * refusal. Settings: tenants.<t>.recipients (ingress-recipients-config.ts). RFC 3463 (5.1.1, 4.1.1).
 */
import type { Logger } from 'pino';
import { REPLIES, type SmtpReply } from '../../base/base-reply.js';
import type { Config } from '../mta-config-schema.js';
import { isEmptyRule, type RecipientRule } from './ingress-recipients-config.js';
import { listed, RecipientFile } from './ingress-recipients-list.js';
import type { RecipientVerifier } from './ingress-recipients-verify.js';
import { normalizeDomain } from './ingress-policy.js';

export type CheckResult = 'accepted' | 'unknown' | 'unavailable';
export type CheckedBy = 'postmaster' | 'catchall' | 'list' | 'file' | 'verify' | 'cache' | 'cluster';

interface CompiledRule {
  rule: RecipientRule;
  entries: ReadonlySet<string>;
  file: RecipientFile | null;
  unavailable: SmtpReply;
}

export interface RecipientCheckDeps {
  verifier: RecipientVerifier;
  log: Logger;
  count?: (result: CheckResult, by: CheckedBy) => void;
}

export class RecipientCheck {
  readonly #byDomain = new Map<string, CompiledRule>();
  readonly #helo: string;

  constructor(config: Config, private readonly deps: RecipientCheckDeps) {
    this.#helo = config.hostname;
    const files = new Map<string, RecipientFile>();
    const compile = (rule: RecipientRule): CompiledRule => {
      let file: RecipientFile | null = null;
      if (rule.file !== undefined) {
        file = files.get(rule.file) ?? new RecipientFile(rule.file, deps.log);
        files.set(rule.file, file);
      }
      return {
        rule, file,
        entries: new Set((rule.list ?? []).map((e) => e.toLowerCase())),
        unavailable: rule.unavailable === 'tempfail-451' ? REPLIES.recipientCheckFailed : REPLIES.recipientUnverified,
      };
    };
    for (const t of Object.values(config.tenants)) {
      const r = t.recipients;
      if (!r) continue;
      const own = new Map(Object.entries(r.domains).map(([d, rule]) => [normalizeDomain(d), compile(rule)]));
      const whole = isEmptyRule(r) ? null : compile(r);
      for (const d of t.domains) {
        const domain = normalizeDomain(d);
        const rule = own.get(domain) ?? whole;
        if (rule) this.#byDomain.set(domain, rule);
      }
    }
  }

  /** Does any hosted domain check its recipients? */
  get active(): boolean {
    return this.#byDomain.size > 0;
  }

  /** null when `address` (whose normalised domain is `domain`) may be given mail, else the refusal. */
  async check(address: string, domain: string): Promise<SmtpReply | null> {
    const c = this.#byDomain.get(domain);
    if (!c) return null;
    const { result, by } = await this.#answer(c, address);
    this.deps.count?.(result, by);
    if (result === 'accepted') return null;
    return result === 'unknown' ? REPLIES.unknownRecipient : c.unavailable;
  }

  async #answer(c: CompiledRule, address: string): Promise<{ result: CheckResult; by: CheckedBy }> {
    if (address.slice(0, address.lastIndexOf('@')).toLowerCase() === 'postmaster') return { result: 'accepted', by: 'postmaster' };
    if (c.rule.catchAll) return { result: 'accepted', by: 'catchall' };
    if (listed(c.entries, address, c.rule.delimiter)) return { result: 'accepted', by: 'list' };
    const inFile = c.file ? await c.file.has(address, c.rule.delimiter) : false;
    if (inFile) return { result: 'accepted', by: 'file' };
    if (c.rule.verify) {
      const { answer, source } = await this.deps.verifier.verify(c.rule.verify, address, this.#helo);
      const by = source === 'probe' ? 'verify' : source;
      return { result: answer === 'known' ? 'accepted' : answer, by };
    }
    // A file never read cannot say who is unknown.
    return inFile === null ? { result: 'unavailable', by: 'file' } : { result: 'unknown', by: c.file ? 'file' : 'list' };
  }
}
