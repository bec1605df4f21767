/*
 * `ichidan suppression`: each tenant's list of recipients its mail is no longer sent to.
 *
 *   ichidan suppression list [--tenant T] [--class C] [--match TEXT] [--expired] [--json]
 *   ichidan suppression add --tenant T ADDRESS [--class C] [--expire D] [--reason R] [--json]
 *   ichidan suppression remove --tenant T ADDRESS [--json]
 *   ichidan suppression import --tenant T FILE [--class C] [--expire D] [--reason R] [--json]
 * The list is read from the queue database (no process needed); add, remove and import go to the
 * running process (admin/admin-suppression.ts). An import file holds one address a line, or CSV
 * whose first column is the address; empty lines, lines starting with "#" and a header line (a
 * first column without "@") are skipped. It is sent in parts small enough for the admin API.
 */
import { readFileSync } from 'node:fs';
import type { Command } from 'commander';
import { readSuppressions, type SuppressionEntry } from '../../queue/queue-suppression-sql.js';
import { admin, commandConfig, fail, iso, openDb, printJson, safe, usage } from './cli-common.js';

interface SuppressionOptions {
  tenant?: string;
  class?: string;
  match?: string;
  expire?: string;
  reason?: string;
  expired?: boolean;
  json?: boolean;
}

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

async function list(cmd: Command, opts: SuppressionOptions): Promise<void> {
  const db = await openDb((await commandConfig(cmd)).dataDir);
  const entries = readSuppressions(db, { tenant: opts.tenant, class: opts.class, match: opts.match, expired: opts.expired === true }, Date.now());
  db.close();
  if (opts.json) {
    process.stdout.write(JSON.stringify(entries) + '\n');
    return;
  }
  process.stdout.write('tenant\taddress\tclass\tsource\tsince\texpires\treason\n');
  for (const e of entries) process.stdout.write(line(e) + '\n');
}

async function add(address: string, cmd: Command, opts: SuppressionOptions): Promise<void> {
  const tenant = opts.tenant!;
  const body = await admin(await commandConfig(cmd), 'POST', '/v1/suppression/add', { tenant, address, class: opts.class, expire: opts.expire, reason: opts.reason });
  if (opts.json) return printJson(body);
  process.stdout.write(`${tenant}: ${address} suppressed${body.expiresAt === null ? '' : ` until ${iso(body.expiresAt as number)}`}\n`);
}

async function remove(address: string, cmd: Command, opts: SuppressionOptions): Promise<void> {
  const tenant = opts.tenant!;
  const body = await admin(await commandConfig(cmd), 'POST', '/v1/suppression/remove', { tenant, address });
  if (opts.json) return printJson(body);
  process.stdout.write(`${tenant}: ${address} no longer suppressed\n`);
}

async function importFile(file: string, cmd: Command, opts: SuppressionOptions): Promise<void> {
  const tenant = opts.tenant!;
  const config = await commandConfig(cmd);
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    fail(`cannot read ${file}: ${(err as Error).message}`);
  }
  const addresses = importAddresses(text);
  if (addresses.length === 0) usage(`${file}: no addresses found (one a line, or CSV whose first column is the address)`);
  let added = 0;
  for (let i = 0; i < addresses.length;) {
    const part: string[] = [];
    let bytes = 0;
    while (i < addresses.length && part.length < PART_ADDRESSES && bytes + addresses[i].length + 3 <= PART_BYTES) {
      bytes += addresses[i].length + 3;
      part.push(addresses[i++]);
    }
    const body = await admin(config, 'POST', '/v1/suppression/import', { tenant, addresses: part, class: opts.class, expire: opts.expire, reason: opts.reason });
    added += body.added as number;
  }
  if (opts.json) return printJson({ tenant, added, read: addresses.length });
  process.stdout.write(`${tenant}: ${added} addresses imported\n`);
}

/** --class, --expire, --reason: how an added entry is kept. */
function entryOptions(cmd: Command): Command {
  return cmd.option('--class <class>', 'the class of the entry (as the list shows it)')
    .option('--expire <duration>', 'dropped by itself after this long (e.g. 30d)')
    .option('--reason <text>', 'why, kept with the entry');
}

export function addSuppressionCommands(program: Command): Command {
  const suppression = program.command('suppression').description("each tenant's list of recipients its mail is no longer sent to");
  suppression.command('list').description('the entries (read from the queue database)')
    .option('--tenant <name>', 'one tenant\'s').option('--class <class>', 'of one class').option('--match <text>', 'addresses containing this')
    .option('--expired', 'expired entries too').option('--json', 'print as JSON')
    .action((opts: SuppressionOptions, cmd: Command) => list(cmd, opts));
  entryOptions(suppression.command('add').description('suppress one address (the running process)')
    .argument('<address>', 'the recipient').requiredOption('--tenant <name>', 'the tenant'))
    .option('--json', 'print the answer as JSON')
    .action((address: string, opts: SuppressionOptions, cmd: Command) => add(address, cmd, opts));
  suppression.command('remove').description('send to an address again (the running process)')
    .argument('<address>', 'the recipient').requiredOption('--tenant <name>', 'the tenant')
    .option('--json', 'print the answer as JSON')
    .action((address: string, opts: SuppressionOptions, cmd: Command) => remove(address, cmd, opts));
  entryOptions(suppression.command('import').description('suppress every address of a file: one a line, or CSV whose first column is the address (the running process)')
    .argument('<file>', 'the file').requiredOption('--tenant <name>', 'the tenant'))
    .option('--json', 'print the count as JSON')
    .action((file: string, opts: SuppressionOptions, cmd: Command) => importFile(file, cmd, opts));
  return suppression;
}
