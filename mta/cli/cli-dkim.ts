/*
 * `ichidan dkim record`: the DNS TXT record that publishes a configured DKIM key.
 *
 *   ichidan dkim record --tenant T --domain D --selector S [-c FILE]
 * Reads the key file the config names (tenants.T.dkim, the entry for D and S) and prints the
 * record in zone-file form, split into strings of at most 255 bytes (RFC 1035 section 3.3.14,
 * RFC 6376 section 3.6.2.2), ready to publish before the key signs any mail. Needs no running
 * process.
 */
import { dkimTxtRecord, readSigningKey } from '../../queue/accept/accept-dkim-config.js';
import { options, usage } from './cli-common.js';

export const DKIM_USAGE = '  ichidan dkim record --tenant T --domain D --selector S [-c FILE]';

/** The record's text as zone-file character-strings of at most 255 bytes each. */
export function zoneStrings(text: string): string {
  const parts: string[] = [];
  for (let i = 0; i < text.length; i += 255) parts.push(`"${text.slice(i, i + 255)}"`);
  return parts.join(' ');
}

export function dkim(args: string[]): void {
  const { config, values, positionals } = options(args, { tenant: { type: 'string' }, domain: { type: 'string' }, selector: { type: 'string' } });
  if (positionals[0] !== 'record' || !values.tenant || !values.domain || !values.selector) usage(DKIM_USAGE);
  const tenant = config.tenants[values.tenant];
  if (!tenant) {
    process.stderr.write(`no tenant "${values.tenant}" (tenants: ${Object.keys(config.tenants).join(', ') || 'none'})\n`);
    process.exit(1);
  }
  const domain = values.domain.toLowerCase().replace(/\.$/, '');
  const entry = tenant.dkim.find((k) => k.domain === domain && k.selector === values.selector);
  if (!entry) {
    const known = tenant.dkim.map((k) => `${k.selector}._domainkey.${k.domain}`).join(', ') || 'none';
    process.stderr.write(`tenants.${values.tenant}.dkim has no key for ${values.selector}._domainkey.${domain} (keys: ${known})\n`);
    process.exit(1);
  }
  const loaded = readSigningKey(entry.key, entry.algorithm);
  if ('problem' in loaded) {
    process.stderr.write(`${loaded.problem}\n`);
    process.exit(1);
  }
  process.stdout.write(`${entry.selector}._domainkey.${entry.domain}. IN TXT ( ${zoneStrings(dkimTxtRecord(loaded.key, entry.algorithm))} )\n`);
}
