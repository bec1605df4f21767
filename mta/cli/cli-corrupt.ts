/*
 * `ichidan queue corrupt`: the queue entries set aside as corrupt at startup (queue/queue-corrupt.ts).
 *
 *   ichidan queue corrupt [list] [-c FILE]     id, kind, set aside, size, open recipients, sender, note
 *                                              (read from the queue database; no process needed)
 *   ichidan queue corrupt show ID [-c FILE]    the entry, its file and the file's first header lines
 *   ichidan queue corrupt requeue ID [-c FILE] back into the queue, when its file of the recorded size is back
 *   ichidan queue corrupt delete ID [-c FILE]  record and files removed
 * Kinds: "unacknowledged" (a spool file without a record: no 250 was sent; removed by itself after
 * queue.leftoverRetention) and "damaged" (an acknowledged message whose file is missing or of the
 * wrong size). show, requeue and delete go to the running process (admin/admin-corrupt.ts).
 */
import { readCorrupt, type CorruptEntry } from '../../queue/queue-corrupt.js';
import type { Config } from '../mta-config-schema.js';
import { admin, iso, openDb, safe, usage } from './cli-common.js';

export const CORRUPT_USAGE = `  ichidan queue corrupt [list] [-c FILE]
  ichidan queue corrupt show|requeue|delete ID [-c FILE]`;

const line = (e: CorruptEntry) =>
  `${e.id}\t${e.kind}\t${e.set_aside_at === null ? '-' : iso(e.set_aside_at)}\t${e.size} B\t${e.recipients} rcpt\t<${safe(e.sender)}>\t${safe(e.note ?? '')}\n`;

export async function corruptCommand(config: Config, positionals: string[]): Promise<void> {
  const [action = 'list', id] = positionals;
  if (action === 'list') {
    const db = openDb(config.dataDir);
    const entries = readCorrupt(db);
    db.close();
    if (entries.length === 0) process.stdout.write('no corrupt entries\n');
    else process.stdout.write('id\tkind\tset aside\tsize\trecipients\tsender\tnote\n' + entries.map(line).join(''));
    return;
  }
  if (!id || !['show', 'requeue', 'delete'].includes(action)) usage(CORRUPT_USAGE);
  const path = `/v1/queue/corrupt/${encodeURIComponent(id)}`;
  if (action === 'show') {
    const body = await admin(config, 'GET', path) as { entry: CorruptEntry; file: { where: string; size: number } | null; head: string };
    const file = body.file ? `${body.file.where === 'spool' ? 'spool' : 'spool/corrupt'}/${id}, ${body.file.size} bytes` : 'none';
    const out = [line(body.entry).trimEnd(), `received ${iso(body.entry.received_at)}; file: ${file}`];
    for (const l of body.head ? body.head.split('\n') : []) out.push(`  ${safe(l)}`);
    process.stdout.write(out.join('\n') + '\n');
    return;
  }
  const body = await admin(config, 'POST', `${path}/${action}`);
  process.stdout.write(action === 'delete' ? `${id}: deleted\n` : `${id}: requeued, ${String(body.recipients)} recipients queued or held\n`);
}
