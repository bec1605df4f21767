/*
 * The records store: what is kept about the traffic beside the queue itself — scan records and
 * engine statistics, engine events and the operator's engine switches, outbound session
 * transcripts, egress events — written through the queue store's one writer thread
 * (queue-store.ts `write`, queue-store-worker.ts) and read on its main-thread connection.
 *
 * Takes: scan records of refused messages (`recordScan`; an accepted message's record goes in the
 *   unit that queues it, then only `countScan`), shadow engines' late runs, engine events (from
 *   engines/ through the composition in mta/), transcript chunks (`recordTranscript`, a
 *   delivery/ `TranscriptSink`), egress events (queue-egress-control.ts).
 * Gives: nothing back to the traffic: a record that cannot be written is logged, never fails
 *   delivery or a reply. Engine statistics are kept in memory and written every STATS_FLUSH_MS
 *   and at close; transcripts are written in batches (TRANSCRIPT_BATCH chunks or
 *   TRANSCRIPT_FLUSH_MS); scan records and transcripts past their retention are pruned hourly.
 * Settings: scanning.recordRetention, delivery.transcripts.retention.
 * SQL: queue-records-sql.ts, queue-records-transcripts.ts, queue-records-egress.ts.
 */
import type { Logger } from 'pino';
import type { TranscriptChunk } from '../delivery/index.js';
import type { EngineEvent, OperatorSwitch } from '../engines/engines-host.js';
import { EngineStats, type RunRecord, type ScanRecord } from '../engines/engines-records.js';
import { readEgressEvent, readEgressEventByUid, readEgressEvents, type EgressEvent, type NewEgressEvent } from './queue-records-egress.js';
import { readEngineStats, readSwitches } from './queue-records-sql.js';
import { mergeChunks } from './queue-records-transcripts.js';
import type { QueueStore } from './queue-store.js';

/** Engine statistics are written this often (and at close). */
const STATS_FLUSH_MS = 10_000;
/** Scan records and session transcripts past retention are pruned this often. */
const PRUNE_INTERVAL_MS = 3_600_000;
/** Session transcripts wait at most this long, or until this many, to be written together. */
const TRANSCRIPT_FLUSH_MS = 500;
const TRANSCRIPT_BATCH = 500;

export interface RecordRetention {
  /** scanning.recordRetention */
  scans: number;
  /** delivery.transcripts.retention */
  transcripts: number;
}

export class QueueRecords {
  readonly #stats = new EngineStats();
  #statsFlushedAt = Date.now();
  #prunedAt = 0;
  #transcripts: TranscriptChunk[] = [];
  #transcriptTimer: NodeJS.Timeout | null = null;

  /** `retention` is read at each pruning, so a reload's new values apply. */
  constructor(private readonly store: QueueStore, private readonly log: Logger, private readonly retention: () => RecordRetention) {}

  /** Loads the last day's engine statistics (at startup), so today's counters go on from where they were. */
  load(now = Date.now()): void {
    this.#stats.load(readEngineStats(this.store.db, new Date(now - 86_400_000).toISOString().slice(0, 10)));
  }

  /** The scan of an accepted message, whose record was written with it: counted in the statistics. */
  countScan(scan: ScanRecord): void {
    this.#stats.add(scan);
  }

  /** The scan of a message that was refused: counted and recorded. */
  recordScan(scan: ScanRecord): void {
    this.#stats.add(scan);
    // Records, not mail: no sync of their own (the next sync point takes them), so a flood of refused mail costs no syncs.
    this.store.write([{ op: 'recordScans', records: [scan] }], { durable: false, lazy: true }).catch((err) => this.log.error({ err, qid: scan.queueId }, 'could not record a scan'));
  }

  /** Runs of shadow engines that ended after the verdict: added to the message's record and the statistics. */
  recordLateRuns(scan: ScanRecord, runs: RunRecord[]): void {
    this.#stats.addLate(scan, runs);
    this.store.write([{ op: 'appendScanRuns', queueId: scan.queueId, runs }], { durable: false, lazy: true }).catch((err) => this.log.error({ err, qid: scan.queueId }, 'could not record late scans'));
  }

  /** An engine's breaker, health or operator switch changed (a disable or enable is kept across restarts). */
  recordEngineEvent(event: EngineEvent): void {
    this.store.write([{ op: 'engineEvent', event }]).catch((err) => this.log.error({ err }, 'could not record an engine event'));
  }

  /** The engines an operator switched off (persisted). */
  engineSwitches(): Map<string, OperatorSwitch> {
    return readSwitches(this.store.db);
  }

  /** Session transcripts from delivery/ (and the proxy): stored without holding delivery up; a failed write is logged. */
  readonly recordTranscript = (chunk: TranscriptChunk): void => {
    this.#transcripts.push(chunk);
    if (this.#transcripts.length >= TRANSCRIPT_BATCH) void this.#flushTranscripts();
    else if (!this.#transcriptTimer) {
      this.#transcriptTimer = setTimeout(() => void this.#flushTranscripts(), TRANSCRIPT_FLUSH_MS);
      this.#transcriptTimer.unref();
    }
  };

  /** Writes an egress event; resolves with its id. */
  async recordEgressEvent(event: NewEgressEvent): Promise<number> {
    const [id] = await this.store.write([{ op: 'egressEvent', event }]) as [number];
    return id;
  }

  /** Marks an egress event undone; resolves with it, or null when it was undone already (or is unknown). */
  async undoEgressEvent(id: number, now: number, by: string): Promise<EgressEvent | null> {
    const [row] = await this.store.write([{ op: 'undoEgressEvent', id, now, by }]) as [EgressEvent | null];
    return row;
  }

  /** Marks the event with this cluster-wide uid undone; resolves with it, or null when nothing was in force. */
  async undoEgressEventByUid(uid: string, now: number, by: string): Promise<EgressEvent | null> {
    const [row] = await this.store.write([{ op: 'undoEgressEventByUid', uid, now, by }]) as [EgressEvent | null];
    return row;
  }

  /** Egress events, newest first; `open`: only those in force at `now`. */
  egressEvents(opts: { limit: number; open?: boolean; now?: number }): EgressEvent[] {
    return readEgressEvents(this.store.db, opts);
  }

  egressEvent(id: number): EgressEvent | undefined {
    return readEgressEvent(this.store.db, id);
  }

  egressEventByUid(uid: string): EgressEvent | undefined {
    return readEgressEventByUid(this.store.db, uid);
  }

  /** The records' part of the queue's sweep: statistics written when due, old records pruned hourly. */
  async tick(now: number): Promise<void> {
    if (now - this.#statsFlushedAt >= STATS_FLUSH_MS) await this.#flushStats();
    if (now - this.#prunedAt >= PRUNE_INTERVAL_MS) {
      this.#prunedAt = now;
      const keep = this.retention();
      await this.store.write([
        { op: 'pruneScans', before: now - keep.scans },
        { op: 'pruneTranscripts', before: now - keep.transcripts },
      ], { durable: false, lazy: true });
    }
  }

  /** Writes what is waiting (transcripts, statistics); the store is closed after this. */
  async close(): Promise<void> {
    await this.#flushTranscripts();
    await this.#flushStats().catch((err) => this.log.error({ err }, 'could not write engine statistics'));
  }

  /**
   * Transcripts are written in batches: many sessions' lines share their database pages and one
   * commit, instead of each message's few lines rewriting whole pages of their own; a session's
   * chunks in one batch are one write of its row.
   */
  #flushTranscripts(): Promise<void> {
    if (this.#transcriptTimer) clearTimeout(this.#transcriptTimer);
    this.#transcriptTimer = null;
    const chunks = mergeChunks(this.#transcripts.splice(0));
    if (chunks.length === 0) return Promise.resolve();
    // A record, not mail: committed without a sync of its own (the next sync point takes it).
    return this.store.write(chunks.map((chunk) => ({ op: 'recordTranscript' as const, chunk })), { durable: false, lazy: true })
      .then(() => undefined, (err) => this.log.error({ err, sessions: chunks.length }, 'could not record session transcripts'));
  }

  async #flushStats(): Promise<void> {
    this.#statsFlushedAt = Date.now();
    const rows = this.#stats.takeDirty();
    if (rows.length === 0) return;
    try {
      await this.store.write([{ op: 'saveEngineStats', rows }], { durable: false, lazy: true });
    } catch (err) {
      this.#stats.restore(rows);
      throw err;
    }
  }
}
