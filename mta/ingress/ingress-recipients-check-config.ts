/*
 * What the schema alone cannot say about `tenants.<t>.recipients` (ingress-recipients-config.ts),
 * each problem with the key it is about: a rule with nothing to check by, a per-domain rule or a
 * list entry for a domain the tenant does not host, a file that cannot be read or holds a bad line
 * (so `check-config`, `start` and a reload refuse it, rather than the domain answering 450 later).
 */
import { readFileSync } from 'node:fs';
import { isEmptyRule, RECIPIENT_ENTRY, type RecipientRule, type RecipientsConfig } from './ingress-recipients-config.js';
import { parseRecipientFile } from './ingress-recipients-list.js';

export interface KeyedIssue {
  path: Array<string | number>;
  message: string;
}

export function recipientsIssues(r: RecipientsConfig, tenantDomains: readonly string[]): KeyedIssue[] {
  const issues: KeyedIssue[] = [];
  const hosted = new Set(tenantDomains.map((d) => d.toLowerCase()));
  const hostedList = tenantDomains.join(', ') || 'none';
  const ruleIssues = (rule: RecipientRule, at: Array<string | number>, domains: ReadonlySet<string>) => {
    rule.list?.forEach((e, i) => {
      // A malformed entry is already reported by the schema.
      if (!RECIPIENT_ENTRY.test(e)) return;
      const d = e.slice(e.lastIndexOf('@') + 1).toLowerCase();
      if (!domains.has(d)) issues.push({ path: [...at, 'list', i], message: `"${e}" is not in ${[...domains].join(', ') || 'no domain'}, which this rule is for` });
    });
    if (rule.file !== undefined) {
      try {
        parseRecipientFile(readFileSync(rule.file, 'utf8'));
      } catch (err) {
        issues.push({ path: [...at, 'file'], message: `${rule.file}: ${(err as NodeJS.ErrnoException).code ? 'cannot be read' : (err as Error).message}` });
      }
    }
  };
  const { domains, ...whole } = r;
  const own = Object.keys(domains);
  if (isEmptyRule(whole) && own.length === 0) {
    issues.push({ path: [], message: 'give list, file, verify or catchAll (or rules under domains): with none, every recipient would be refused' });
  }
  if (!isEmptyRule(whole)) ruleIssues(whole, [], hosted);
  for (const [d, rule] of Object.entries(domains)) {
    if (!hosted.has(d)) issues.push({ path: ['domains', d], message: `the tenant does not host "${d}" (domains: ${hostedList})` });
    else if (isEmptyRule(rule)) issues.push({ path: ['domains', d], message: 'give list, file, verify or catchAll: with none, every recipient would be refused' });
    else ruleIssues(rule, ['domains', d], new Set([d]));
  }
  return issues;
}
