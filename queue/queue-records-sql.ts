/*
 * The records in the queue database — what is kept about the traffic, not the traffic itself:
 * scan records (one per scanned message, refused ones too), engine statistics per (day, engine),
 * engine events and the operator's engine switches; and, from their own files, session
 * transcripts (queue-records-transcripts.ts) and egress events (queue-records-egress.ts).
 *
 * Gives: the schema, the write operations as data (`RecordsWriteOp`, applied by
 *   `createRecordsWriter` on the one writer thread's connection, queue-store-worker.ts, beside
 *   the queue's own operations), and the reads the daemon and the CLI make.
 * Settings: scanning.recordRetention (the pruning's `before`).
 */
import type Database from 'better-sqlite3';
import type { EngineEvent, OperatorSwitch } from '../engines/engines-host.js';
import type { RunRecord, ScanRecord, StatRow } from '../engines/engines-records.js';
import { createEgressWriter, EGRESS_SCHEMA, migrateEgress, type EgressWriteOp } from './queue-records-egress.js';
import { createTranscriptWriter, TRANSCRIPTS_SCHEMA, type TranscriptWriteOp } from './queue-records-transcripts.js';

export type RecordsWriteOp =
  | { op: 'recordScans'; records: ScanRecord[] }
  | { op: 'appendScanRuns'; queueId: string; runs: RunRecord[] }
  | { op: 'pruneScans'; before: number }
  | { op: 'saveEngineStats'; rows: StatRow[] }
  | { op: 'engineEvent'; event: EngineEvent }
  | TranscriptWriteOp
  | EgressWriteOp;

export const RECORDS_SCHEMA = EGRESS_SCHEMA + TRANSCRIPTS_SCHEMA + `
CREATE TABLE IF NOT EXISTS scans (
  queue_id TEXT PRIMARY KEY,
  at INTEGER NOT NULL,
  action TEXT NOT NULL,
  reason TEXT NOT NULL,
  tenants TEXT NOT NULL,
  ms REAL NOT NULL,
  overhead_ms REAL NOT NULL,
  runs TEXT NOT NULL,
  generation INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS scans_at ON scans (at);
CREATE TABLE IF NOT EXISTS engine_events (
  at INTEGER NOT NULL,
  engine TEXT NOT NULL,
  event TEXT NOT NULL,
  from_state TEXT,
  to_state TEXT,
  reason TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS engine_events_at ON engine_events (at);
CREATE TABLE IF NOT EXISTS engine_switches (
  engine TEXT PRIMARY KEY,
  reason TEXT NOT NULL,
  at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS engine_stats (
  day TEXT NOT NULL,
  engine TEXT NOT NULL,
  scanned INTEGER NOT NULL,
  detected INTEGER NOT NULL,
  detected_alone INTEGER NOT NULL,
  errors INTEGER NOT NULL,
  timeouts INTEGER NOT NULL,
  skipped INTEGER NOT NULL,
  histogram TEXT NOT NULL,
  PRIMARY KEY (day, engine)
) WITHOUT ROWID;
`;

/** Brings the records of a database made by an earlier version up to this schema. */
export function migrateRecords(db: Database.Database): void {
  const scanColumns = (db.prepare(`PRAGMA table_info(scans)`).all() as Array<{ name: string }>).map((c) => c.name);
  if (!scanColumns.includes('generation')) db.exec(`ALTER TABLE scans ADD COLUMN generation INTEGER NOT NULL DEFAULT 0`);
  migrateEgress(db);
}

/** Prepares the records' write statements on `db` and returns the function that applies one operation. */
export function createRecordsWriter(db: Database.Database): (op: RecordsWriteOp) => unknown {
  const s = {
    insertScan: db.prepare(`INSERT OR REPLACE INTO scans (queue_id, at, action, reason, tenants, ms, overhead_ms, runs, generation) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`),
    scanRuns: db.prepare(`SELECT runs FROM scans WHERE queue_id = ?`),
    setScanRuns: db.prepare(`UPDATE scans SET runs = ? WHERE queue_id = ?`),
    pruneScans: db.prepare(`DELETE FROM scans WHERE at < ?`),
    saveStat: db.prepare(`INSERT OR REPLACE INTO engine_stats (day, engine, scanned, detected, detected_alone, errors, timeouts, skipped, histogram)
      VALUES (@day, @engine, @scanned, @detected, @detectedAlone, @errors, @timeouts, @skipped, @histogram)`),
    insertEvent: db.prepare(`INSERT INTO engine_events (at, engine, event, from_state, to_state, reason) VALUES (?, ?, ?, ?, ?, ?)`),
    setSwitch: db.prepare(`INSERT OR REPLACE INTO engine_switches (engine, reason, at) VALUES (?, ?, ?)`),
    clearSwitch: db.prepare(`DELETE FROM engine_switches WHERE engine = ?`),
  };
  const transcripts = createTranscriptWriter(db);
  const egress = createEgressWriter(db);
  return (op) => {
    switch (op.op) {
      case 'recordTranscript':
      case 'pruneTranscripts':
        return transcripts(op);
      case 'egressEvent':
      case 'undoEgressEvent':
      case 'undoEgressEventByUid':
        return egress(op);
      case 'recordScans':
        for (const r of op.records) s.insertScan.run(r.queueId, r.at, r.action, r.reason, r.tenants.join(','), r.ms, r.overheadMs, JSON.stringify(r.runs), r.generation);
        return null;
      case 'appendScanRuns': {
        const row = s.scanRuns.get(op.queueId) as { runs: string } | undefined;
        if (row) s.setScanRuns.run(JSON.stringify([...(JSON.parse(row.runs) as RunRecord[]), ...op.runs]), op.queueId);
        return null;
      }
      case 'pruneScans':
        return s.pruneScans.run(op.before).changes;
      case 'saveEngineStats':
        for (const r of op.rows) s.saveStat.run({ ...r, histogram: JSON.stringify(r.histogram) });
        return null;
      case 'engineEvent':
        s.insertEvent.run(op.event.at, op.event.engine, op.event.event, op.event.from ?? null, op.event.to ?? null, op.event.reason);
        if (op.event.event === 'disabled') s.setSwitch.run(op.event.engine, op.event.reason, op.event.at);
        if (op.event.event === 'enabled') s.clearSwitch.run(op.event.engine);
        return null;
    }
  };
}

/** Engine statistics rows from `since` (a UTC date, "2026-11-25") on, oldest first. */
export function readEngineStats(db: Database.Database, since: string): StatRow[] {
  const rows = db.prepare(`SELECT day, engine, scanned, detected, detected_alone AS detectedAlone, errors, timeouts, skipped, histogram
    FROM engine_stats WHERE day >= ? ORDER BY day, engine`).all(since) as Array<Omit<StatRow, 'histogram'> & { histogram: string }>;
  return rows.map((r) => ({ ...r, histogram: JSON.parse(r.histogram) as number[] }));
}

/** The stored scan record of one message. */
export function readScan(db: Database.Database, queueId: string): { queue_id: string; at: number; action: string; reason: string; tenants: string; ms: number; overhead_ms: number; runs: string } | undefined {
  return db.prepare(`SELECT * FROM scans WHERE queue_id = ?`).get(queueId) as never;
}

/** Engines an operator switched off, as persisted (a restart keeps them off). */
export function readSwitches(db: Database.Database): Map<string, OperatorSwitch> {
  const rows = db.prepare(`SELECT engine, reason, at FROM engine_switches`).all() as Array<{ engine: string; reason: string; at: number }>;
  return new Map(rows.map((r) => [r.engine, { reason: r.reason, at: r.at }]));
}

export function readEngineEvents(db: Database.Database, limit: number): Array<{ at: number; engine: string; event: string; from_state: string | null; to_state: string | null; reason: string }> {
  return db.prepare(`SELECT * FROM engine_events ORDER BY at DESC, rowid DESC LIMIT ?`).all(limit) as never;
}
