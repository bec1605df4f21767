/*
 * The records a scenario's daemon wrote (scans, engine statistics and events, quarantine), read the
 * way the admin API reads them: from the data folder's queue.db, opened read-only beside the
 * running writer. Scenarios read records through here, so where the queue keeps its record readers
 * is named once for all of test/.
 *
 * Takes: a data folder. Gives: recordsDb(), the record readers of the queue's SQL module, and
 * readTranscriptTables() for the outbound session transcripts.
 */
import Database from 'better-sqlite3';
import { join } from 'node:path';
import { readConnection, type CommandRow, type ConnectionMessageRow, type ConnectionRow } from '../../queue/queue-records-transcripts.js';

export { readEngineEvents, readEngineStats, readScan } from '../../queue/queue-records-sql.js';
export { readQuarantine } from '../../queue/queue-store-sql.js';

/** The data folder's queue.db, read-only; the caller closes it. */
export function recordsDb(dataDir: string): Database.Database {
  return new Database(join(dataDir, 'queue.db'), { readonly: true });
}

/**
 * The outbound session transcripts: sessions, their message links and their command lines, in order
 * (read as `ichidan sessions show` reads them: the lines are stored in compressed chunks).
 */
export function readTranscriptTables(dataDir: string): { connections: ConnectionRow[]; links: Array<ConnectionMessageRow & { connection_id: string }>; commands: Array<CommandRow & { connection_id: string }> } {
  const db = recordsDb(dataDir);
  try {
    const connections = db.prepare(`SELECT * FROM connections ORDER BY started_at, id`).all() as ConnectionRow[];
    return {
      connections,
      links: db.prepare(`SELECT * FROM connection_messages ORDER BY connection_id, n`).all() as never,
      commands: connections.map((c) => c.id).sort().flatMap((id) => readConnection(db, id)!.commands.map((l) => ({ connection_id: id, ...l }))),
    };
  } finally {
    db.close();
  }
}
