/*
 * The queue database after the machine stopped with it open (queue-run-marker.ts): commits since
 * the last sync point were not synced, and a checkpoint may have been copying pages into the
 * database file, so it may be damaged. It is checked whole (`PRAGMA integrity_check`) before
 * anything reads it; a damaged one is set aside as `queue.db.damaged-<time>` (with its WAL), for
 * an operator, and the queue starts on a new database: the spool journal's messages are inserted
 * again from their journaled copies (queue-journal-replay.ts) and every other spool file is set
 * aside by reconciliation as damaged (its record lost), never delivered blindly.
 * Takes: the database file. Gives: whether it was sound, and where a damaged one went.
 */
import { existsSync } from 'node:fs';
import { rename } from 'node:fs/promises';
import Database from 'better-sqlite3';

export interface StoreCheck { sound: boolean; problems: string[]; setAside?: string }

const SHOWN = 5;

export async function checkAfterCrash(file: string, now = new Date()): Promise<StoreCheck> {
  if (!existsSync(file)) return { sound: true, problems: [] };
  let problems: string[];
  try {
    const db = new Database(file, { fileMustExist: true });
    try {
      // The WAL's valid frames are part of the database: opening it recovers them, the check sees them.
      problems = (db.pragma('integrity_check') as Array<{ integrity_check: string }>).map((r) => r.integrity_check).filter((r) => r !== 'ok');
    } finally {
      db.close();
    }
  } catch (err) {
    problems = [(err as Error).message];
  }
  if (problems.length === 0) return { sound: true, problems };
  const setAside = `${file}.damaged-${now.toISOString().replace(/[:.]/g, '-')}`;
  for (const suffix of ['', '-wal', '-shm']) {
    if (existsSync(file + suffix)) await rename(file + suffix, setAside + suffix);
  }
  return { sound: false, problems: problems.slice(0, SHOWN), setAside };
}
