/*
 * `ichidan queue corrupt`: the queue entries set aside as corrupt at startup (queue/queue-corrupt.ts).
 *
 *   ichidan queue corrupt [list] [--json]      id, kind, set aside, size, open recipients, sender, note
 *                                              (read from the queue database; no process needed)
 *   ichidan queue corrupt show ID [--json]     the entry, its file and the file's first header lines
 *   ichidan queue corrupt requeue ID           back into the queue, when its file of the recorded size is back
 *   ichidan queue corrupt delete ID            record and files removed
 * Kinds: "unacknowledged" (a spool file without a record: no 250 was sent; removed by itself after
 * queue.leftoverRetention) and "damaged" (an acknowledged message whose file is missing or of the
 * wrong size). show, requeue and delete go to the running process (admin/admin-corrupt.ts).
 */
import type { Command } from 'commander';
import { readCorrupt, type CorruptEntry } from '../../queue/queue-corrupt.js';
import { admin, commandConfig, iso, openDb, printJson, safe } from './cli-common.js';

const line = (e: CorruptEntry) =>
  `${e.id}\t${e.kind}\t${e.set_aside_at === null ? '-' : iso(e.set_aside_at)}\t${e.size} B\t${e.recipients} rcpt\t<${safe(e.sender)}>\t${safe(e.note ?? '')}\n`;

const path = (id: string) => `/v1/queue/corrupt/${encodeURIComponent(id)}`;

async function list(cmd: Command, opts: { json?: boolean }): Promise<void> {
  const db = await openDb((await commandConfig(cmd)).dataDir);
  const entries = readCorrupt(db);
  db.close();
  if (opts.json) return printJson(entries);
  if (entries.length === 0) process.stdout.write('no corrupt entries\n');
  else process.stdout.write('id\tkind\tset aside\tsize\trecipients\tsender\tnote\n' + entries.map(line).join(''));
}

async function show(id: string, cmd: Command, opts: { json?: boolean }): Promise<void> {
  const body = await admin(await commandConfig(cmd), 'GET', path(id)) as { entry: CorruptEntry; file: { where: string; size: number } | null; head: string };
  if (opts.json) return printJson(body);
  const file = body.file ? `${body.file.where === 'spool' ? 'spool' : 'spool/corrupt'}/${id}, ${body.file.size} bytes` : 'none';
  const out = [line(body.entry).trimEnd(), `received ${iso(body.entry.received_at)}; file: ${file}`];
  for (const l of body.head ? body.head.split('\n') : []) out.push(`  ${safe(l)}`);
  process.stdout.write(out.join('\n') + '\n');
}

async function change(action: 'requeue' | 'delete', id: string, cmd: Command): Promise<void> {
  const body = await admin(await commandConfig(cmd), 'POST', `${path(id)}/${action}`);
  process.stdout.write(action === 'delete' ? `${id}: deleted\n` : `${id}: requeued, ${String(body.recipients)} recipients queued or held\n`);
}

export function addCorruptCommands(queue: Command): Command {
  const corrupt = queue.command('corrupt').description('entries set aside as corrupt at startup: list, show, requeue, delete');
  corrupt.command('list', { isDefault: true }).description('every entry set aside (read from the queue database)')
    .option('--json', 'print as JSON')
    .action((opts: { json?: boolean }, cmd: Command) => list(cmd, opts));
  corrupt.command('show').description('one entry, its file and the file\'s first header lines (the running process)')
    .argument('<id>', 'queue id').option('--json', 'print as JSON')
    .action((id: string, opts: { json?: boolean }, cmd: Command) => show(id, cmd, opts));
  corrupt.command('requeue').description('back into the queue, once its file of the recorded size is back (the running process)')
    .argument('<id>', 'queue id')
    .action((id: string, _opts: unknown, cmd: Command) => change('requeue', id, cmd));
  corrupt.command('delete').description('remove the record and its files (the running process)')
    .argument('<id>', 'queue id')
    .action((id: string, _opts: unknown, cmd: Command) => change('delete', id, cmd));
  return corrupt;
}
