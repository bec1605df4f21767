/*
 * `ichidan suppression`: each tenant's list of recipients its mail is no longer sent to.
 *
 *   ichidan suppression list [--tenant T] [--class C] [--match TEXT] [--expired] [--json]
 *   ichidan suppression add --tenant T ADDRESS [--class C] [--expire D] [--reason R]
 *   ichidan suppression remove --tenant T ADDRESS
 *   ichidan suppression import --tenant T FILE [--class C] [--expire D] [--reason R]
 * The list is read from the queue database (no process needed); add, remove and import go to the
 * running process (admin/admin-suppression.ts). An import file holds one address a line, or CSV
 * whose first column is the address; empty lines, lines starting with "#" and a header line (a
 * first column without "@") are skipped. It is sent in parts small enough for the admin API.
 */
import { readFileSync } from 'node:fs';
import { readSuppressions, type SuppressionEntry } from '../../queue/queue-suppression-sql.js';
import { admin, iso, openDb, options, safe, usage } from './cli-common.js';

export const SUPPRESSION_USAGE = `  ichidan suppression list [--tenant T] [--class C] [--match TEXT] [--expired] [--json] [-c FILE]
  ichidan suppression add --tenant T ADDRESS [--class C] [--expire DURATION] [--reason TEXT] [-c FILE]
  ichidan suppression remove --tenant T ADDRESS [-c FILE]
  ichidan suppression import --tenant T FILE [--class C] [--expire DURATION] [--reason TEXT] [-c FILE]`;

const OPTIONS = {
  tenant: { type: 'string' }, class: { type: 'string' }, match: { type: 'string' }, expire: { type: 'string' }, reason: { type: 'string' },
  expired: { type: 'boolean' }, json: { type: 'boolean' },
} as const;

/** Addresses per import request, and bytes of them: well inside the admin API's 16 KB body. */
const PART_ADDRESSES = 500;
const PART_BYTES = 12 * 1024;

function line(e: SuppressionEntry): string {
  const expires = e.expires_at === null ? 'never' : iso(e.expires_at);
  return [e.tenant, e.address, e.class, e.source, iso(e.created_at), expires, e.reason].map(safe).join('\t');
}

/** The addresses of an import file, in order, each once. */
export function importAddresses(text: string): string[] {
  const out = new Set<string>();
  for (const raw of text.split(/\r?\n/)) {
    const first = raw.split(/[,;\t]/)[0].trim().replace(/^"(.*)"$/, '$1').replace(/^<(.*)>$/, '$1');
    if (first === '' || first.startsWith('#') || !first.includes('@')) continue;
    out.add(first);
  }
  return [...out];
}

export async function suppression(args: string[]): Promise<void> {
  const { config, values, positionals } = options(args, OPTIONS as never);
  const flags = values as Record<string, string | boolean | undefined>;
  const [action, arg] = positionals;
  const tenant = values.tenant;
  if (action === 'list') {
    const db = openDb(config.dataDir);
    const entries = readSuppressions(db, { tenant, class: values.class, match: values.match, expired: flags.expired === true }, Date.now());
    db.close();
    if (flags.json === true) {
      process.stdout.write(JSON.stringify(entries) + '\n');
      return;
    }
    process.stdout.write('tenant\taddress\tclass\tsource\tsince\texpires\treason\n');
    for (const e of entries) process.stdout.write(line(e) + '\n');
    return;
  }
  if (!tenant || !arg || !['add', 'remove', 'import'].includes(action)) usage(SUPPRESSION_USAGE);
  const extra = { class: values.class, expire: values.expire, reason: values.reason };
  if (action === 'add') {
    const body = await admin(config, 'POST', '/v1/suppression/add', { tenant, address: arg, ...extra });
    process.stdout.write(`${tenant}: ${arg} suppressed${body.expiresAt === null ? '' : ` until ${iso(body.expiresAt as number)}`}\n`);
    return;
  }
  if (action === 'remove') {
    await admin(config, 'POST', '/v1/suppression/remove', { tenant, address: arg });
    process.stdout.write(`${tenant}: ${arg} no longer suppressed\n`);
    return;
  }
  let text: string;
  try {
    text = readFileSync(arg, 'utf8');
  } catch (err) {
    process.stderr.write(`cannot read ${arg}: ${(err as Error).message}\n`);
    process.exit(1);
  }
  const addresses = importAddresses(text);
  if (addresses.length === 0) usage(`${arg}: no addresses found (one a line, or CSV whose first column is the address)`);
  let added = 0;
  for (let i = 0; i < addresses.length;) {
    const part: string[] = [];
    let bytes = 0;
    while (i < addresses.length && part.length < PART_ADDRESSES && bytes + addresses[i].length + 3 <= PART_BYTES) {
      bytes += addresses[i].length + 3;
      part.push(addresses[i++]);
    }
    const body = await admin(config, 'POST', '/v1/suppression/import', { tenant, addresses: part, ...extra });
    added += body.added as number;
  }
  process.stdout.write(`${tenant}: ${added} addresses imported\n`);
}
