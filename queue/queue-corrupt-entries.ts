/*
 * The operator's side of the queue entries set aside as corrupt (kinds and rules: queue-corrupt.ts).
 *
 * Takes: an entry id from the admin API (show, requeue, delete), and the clock (leftovers).
 * Gives: `show` (the record, the file that best matches it, its first header lines), `requeue` (a
 *   damaged entry whose file of the recorded size is back goes into the queue; anything else is
 *   refused with the reason), `delete` (record and files), and `removeLeftovers`, which removes
 *   never-acknowledged leftovers older than queue.leftoverRetention.
 * Touches: the spool and its corrupt/ folder; the queue database.
 * Settings: queue.leftoverRetention.
 */
import { open } from 'node:fs/promises';
import type { Logger } from 'pino';
import { expiredLeftovers, readCorruptEntry, requeueProblem, type CorruptEntry } from './queue-corrupt.js';
import type { Spool } from './queue-spool.js';
import type { QueueStore, RecipientRow } from './queue-store.js';

/** What `show` gives of a file: at most this many header lines from its first bytes. */
const HEAD_BYTES = 4096;
const HEAD_LINES = 20;

export class CorruptEntries {
  constructor(
    private readonly spool: Spool,
    private readonly store: QueueStore,
    private readonly log: Logger,
    private readonly schedule: (rows: RecipientRow[]) => void,
    private readonly retention: () => number,
  ) {}

  /** A corrupt entry, what the spool holds for it, and the first header lines of that file. */
  async show(id: string): Promise<{ entry: CorruptEntry; file: { where: 'spool' | 'corrupt'; size: number } | null; head: string } | null> {
    const entry = readCorruptEntry(this.store.db, id);
    if (!entry) return null;
    const file = await this.#corruptFile(entry);
    let head = '';
    if (file) {
      const path = file.where === 'spool' ? this.spool.path(id) : this.spool.asidePath(id);
      const fh = await open(path, 'r');
      try {
        const { buffer, bytesRead } = await fh.read({ buffer: Buffer.alloc(HEAD_BYTES), position: 0 });
        head = buffer.subarray(0, bytesRead).toString('latin1').split(/\r?\n\r?\n/)[0].split(/\r?\n/).slice(0, HEAD_LINES).join('\n');
      } finally {
        await fh.close();
      }
    }
    return { entry, file, head };
  }

  /** The file that best matches a corrupt entry's record: the right size first, the spool before the corrupt folder. */
  async #corruptFile(entry: CorruptEntry): Promise<{ where: 'spool' | 'corrupt'; size: number } | null> {
    const found = [
      { where: 'spool' as const, size: entry.kind === 'damaged' ? await this.spool.size(entry.id) : null },
      { where: 'corrupt' as const, size: await this.spool.asideSize(entry.id) },
    ].filter((f): f is { where: 'spool' | 'corrupt'; size: number } => f.size !== null);
    return found.find((f) => f.size === entry.size) ?? found[0] ?? null;
  }

  /**
   * Puts a damaged entry back into the queue once a file of the recorded size is there; its queued
   * recipients are due at once. Refuses, saying why, an entry that cannot be delivered as it is.
   */
  async requeue(id: string): Promise<{ ok: true; recipients: number } | { ok: false; missing: boolean; error: string }> {
    const entry = readCorruptEntry(this.store.db, id);
    if (!entry) return { ok: false, missing: true, error: `no corrupt entry ${id}` };
    const file = await this.#corruptFile(entry);
    const problem = requeueProblem(entry.kind, { recordSize: entry.size, fileSize: file?.size ?? null }, entry.recipients);
    if (problem) return { ok: false, missing: false, error: `${id} cannot be requeued: ${problem}` };
    if (file!.where === 'corrupt') await this.spool.restore(id);
    else await this.spool.removeAside(id);
    const [rows] = await this.store.write([{ op: 'requeueCorrupt', id, now: Date.now() }]) as [RecipientRow[] | null];
    if (!rows) return { ok: false, missing: true, error: `no corrupt entry ${id}` };
    this.schedule(rows);
    this.log.warn({ qid: id, recipients: rows.length }, 'corrupt entry requeued by an operator');
    return { ok: true, recipients: rows.length };
  }

  /** Removes a corrupt entry, its record and its files; false when there is no such entry. */
  async delete(id: string, why = 'deleted by an operator'): Promise<boolean> {
    const entry = readCorruptEntry(this.store.db, id);
    if (!entry) return false;
    await this.spool.removeAside(id);
    if (entry.kind === 'damaged') await this.spool.remove(id);
    const [removed] = await this.store.write([{ op: 'deleteCorrupt', id }], { essential: true }) as [boolean];
    if (removed) this.log.warn({ qid: id, kind: entry.kind, note: entry.note }, `corrupt entry ${why}`);
    return removed;
  }

  /** Never-acknowledged leftovers past queue.leftoverRetention go (nobody was promised them). */
  async removeLeftovers(now: number): Promise<void> {
    for (const id of expiredLeftovers(this.store.db, now - this.retention())) {
      await this.delete(id, 'removed: never acknowledged, past queue.leftoverRetention');
    }
  }
}
