/*
 * The scan inside the accept step: the spooled message read by the engines of the transaction's
 * snapshot, and the record of that scan.
 *
 * Takes: the spool writer the data went into (every chunk flushed to the file first: the engines
 *   read the file, or the bytes kept in memory), the scan context, the snapshot's engine set, the
 *   structure limit the message passes (null: none; judged with the verdict, engines or none).
 * Gives: the engines' decision and its record (`ichidan scans show ID`). Shadow engines may still
 *   be reading when the verdict is made: they keep the snapshot (retained here) and the file handle
 *   until they end, and their runs are added to the record once `written()` says the message's own
 *   record is in the store.
 * Settings: limits.dataTimeout bounds the scan; `engines`, `scanning`.
 */
import { open } from 'node:fs/promises';
import type { Logger } from 'pino';
import { spoolMessage, type EngineSet, type ScanContext, type ScanDecision } from '../../engines/index.js';
import { runRecord, scanRecord, type RunRecord, type ScanRecord } from '../../engines/engines-records.js';
import type { SpoolWriter } from '../queue-spool.js';

/** The part of a config snapshot a scan borrows: its engines, its generation, and a use of it. */
export interface ScanSnapshot {
  generation: number;
  engines: EngineSet;
  retain(): void;
  release(): void;
}

export interface Scanned {
  decision: ScanDecision;
  record: ScanRecord;
  /** The message's record is written (or never will be): late shadow runs may be added now. */
  written(): void;
}

export async function scanSpooled(
  writer: SpoolWriter, bytes: number, context: ScanContext & { tenants: string[] }, snapshot: ScanSnapshot,
  timeoutMs: number, structure: string | null, lateRuns: (record: ScanRecord, runs: RunRecord[]) => void, log: Logger,
): Promise<Scanned> {
  await writer.flush(bytes);
  // A message not kept in memory is read through one handle, which outlives the file's removal
  // (a refused message, or one delivered before a shadow engine has finished).
  const handle = writer.kept ? null : await open(writer.path, 'r');
  let decision: ScanDecision;
  try {
    decision = await snapshot.engines.scan(spoolMessage(writer.path, bytes, writer.kept, handle ?? undefined), context, AbortSignal.timeout(timeoutMs), structure);
  } catch (err) {
    await handle?.close();
    throw err;
  }
  const record = scanRecord(writer.id, context.tenants, decision, Date.now(), snapshot.generation);
  let written = () => undefined as void;
  const late = decision.late;
  if (late) {
    const recorded = new Promise<void>((resolve) => { written = resolve; });
    snapshot.retain();
    void recorded.then(() => late).then((runs) => lateRuns(record, runs.map(runRecord)))
      .catch((err) => log.error({ err, qid: writer.id }, 'could not record late scans'))
      .finally(() => {
        handle?.close().catch(() => undefined);
        try {
          snapshot.release();
        } catch (err) {
          log.error({ err, qid: writer.id }, 'could not release the engine snapshot');
        }
      });
  } else {
    await handle?.close();
  }
  return { decision, record, written };
}
