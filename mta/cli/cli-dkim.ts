/*
 * `ichidan dkim record`: the DNS TXT record that publishes a configured DKIM key.
 *
 *   ichidan dkim record --tenant T --domain D --selector S [--json]
 * Reads the key file the config names (tenants.T.dkim, the entry for D and S) and prints the
 * record in zone-file form, split into strings of at most 255 bytes (RFC 1035 section 3.3.14,
 * RFC 6376 section 3.6.2.2), ready to publish before the key signs any mail. Needs no running
 * process.
 */
import type { Command } from 'commander';
import { commandConfig, fail, printJson } from './cli-common.js';

/** The record's text as zone-file character-strings of at most 255 bytes each. */
export function zoneStrings(text: string): string {
  const parts: string[] = [];
  for (let i = 0; i < text.length; i += 255) parts.push(`"${text.slice(i, i + 255)}"`);
  return parts.join(' ');
}

interface RecordOptions {
  tenant: string;
  domain: string;
  selector: string;
  json?: boolean;
}

async function record(cmd: Command, opts: RecordOptions): Promise<void> {
  const config = await commandConfig(cmd);
  const tenant = config.tenants[opts.tenant];
  if (!tenant) fail(`no tenant "${opts.tenant}" (tenants: ${Object.keys(config.tenants).join(', ') || 'none'})`);
  const domain = opts.domain.toLowerCase().replace(/\.$/, '');
  const entry = tenant.dkim.find((k) => k.domain === domain && k.selector === opts.selector);
  if (!entry) {
    const known = tenant.dkim.map((k) => `${k.selector}._domainkey.${k.domain}`).join(', ') || 'none';
    fail(`tenants.${opts.tenant}.dkim has no key for ${opts.selector}._domainkey.${domain} (keys: ${known})`);
  }
  const { dkimTxtRecord, readSigningKey } = await import('../../queue/accept/accept-dkim-config.js');
  const loaded = readSigningKey(entry.key, entry.algorithm);
  if ('problem' in loaded) fail(loaded.problem);
  const name = `${entry.selector}._domainkey.${entry.domain}.`;
  const text = dkimTxtRecord(loaded.key, entry.algorithm);
  if (opts.json) return printJson({ name, type: 'TXT', text });
  process.stdout.write(`${name} IN TXT ( ${zoneStrings(text)} )\n`);
}

export function addDkimCommands(program: Command): Command {
  const dkim = program.command('dkim').description('DKIM keys the config names');
  dkim.command('record').description('the DNS TXT record publishing a configured key, in zone-file form (reads the key file; no process needed)')
    .requiredOption('--tenant <name>', 'the tenant').requiredOption('--domain <domain>', 'the signing domain').requiredOption('--selector <selector>', 'the selector')
    .option('--json', 'print as JSON')
    .action((opts: RecordOptions, cmd: Command) => record(cmd, opts));
  return dkim;
}
