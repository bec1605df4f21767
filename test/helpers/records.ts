/*
 * The records a scenario's daemon wrote (scans, engine statistics and events, quarantine), read the
 * way the admin API reads them: from the data folder's queue.db, opened read-only beside the
 * running writer. Scenarios read records through here, so where the queue keeps its record readers
 * is named once for all of test/.
 *
 * Takes: a data folder. Gives: recordsDb() and the record readers of the queue's SQL module.
 */
import Database from 'better-sqlite3';
import { join } from 'node:path';

export { readEngineEvents, readEngineStats, readQuarantine, readScan } from '../../queue/queue-store-sql.js';

/** The data folder's queue.db, read-only; the caller closes it. */
export function recordsDb(dataDir: string): Database.Database {
  return new Database(join(dataDir, 'queue.db'), { readonly: true });
}
