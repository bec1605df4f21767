/*
 * Reading what the engines did while test traffic flowed: the scan records and engine events a data
 * folder's queue.db holds, which accepted messages of a load never reached the sink, and a one-line
 * summary of a load's outcomes for the test log.
 *
 * Takes: a data folder (opened read-only), the Sent list of helpers/load.ts, a Sink.
 * Gives: scans(), engineEvents(), lost(), waitDelivered(), summary(), sleep().
 */
import { waitUntil } from './app.js';
import type { Sent } from './load.js';
import { readEngineEvents, recordsDb } from './records.js';
import type { Sink } from './sink.js';

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

interface ScanRow { queue_id: string; at: number; ms: number; action: string; generation: number; runs: string }
export interface ScanRun { engine: string; status: string; skipped?: string; error?: string }

/** Every scan record, oldest first, with its engine runs parsed and the engines' names sorted. */
export function scans(dataDir: string): Array<ScanRow & { engines: string[]; parsed: ScanRun[] }> {
  const db = recordsDb(dataDir);
  try {
    return (db.prepare('SELECT * FROM scans ORDER BY at').all() as ScanRow[]).map((r) => {
      const parsed = JSON.parse(r.runs) as ScanRun[];
      return { ...r, parsed, engines: parsed.map((p) => p.engine).sort() };
    });
  } finally {
    db.close();
  }
}

/** Every engine event (added, removed, closed, breaker transitions, switches), oldest first. */
export function engineEvents(dataDir: string) {
  const db = recordsDb(dataDir);
  try {
    return readEngineEvents(db, 10_000).reverse();
  } finally {
    db.close();
  }
}

/** The accepted messages that have not arrived at the sink (by their unique subject). */
export function lost(sent: Sent[], sink: Sink): Sent[] {
  const arrived = new Set(sink.messages.map((m) => /\r\nSubject: (load-\d+)\r\n/.exec(m.data.toString())?.[1]));
  return sent.filter((s) => s.code === 250 && !arrived.has(s.subject));
}

export async function waitDelivered(sent: Sent[], sink: Sink): Promise<void> {
  await waitUntil(() => lost(sent, sink).length === 0, 30_000, 'every accepted message to arrive');
}

export function summary(label: string, sent: Sent[], extra: Record<string, unknown> = {}): void {
  const accepted = sent.filter((s) => s.code === 250).length;
  const tempfailed = sent.filter((s) => s.code !== null && s.code >= 400 && s.code < 500).length;
  const refused = sent.filter((s) => s.code !== null && s.code >= 500).length;
  const broken = sent.filter((s) => s.code === null).length;
  console.log(`${label}: ${sent.length} transactions, ${accepted} accepted, ${tempfailed} tempfailed, ${refused} refused, ${broken} failed at the connection`, extra);
}
