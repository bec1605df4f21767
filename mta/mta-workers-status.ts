/*
 * The workers' status file: what the primary (mta-workers.ts) tells the operator about the nodes
 * it supervises, read by `ichidan workers` (cli/cli-workers.ts) without talking to any process.
 *
 * Takes: the primary's view of its workers, written whole at every change (a worker started,
 *   listening, exited, waiting to restart, stopping).
 * Gives: `writeWorkersStatus` (temporary file, then rename: a reader never sees half a file; mode
 *   0600 like everything in the data folder) and `readWorkersStatus`, which returns null when no
 *   file is there or its primary no longer runs (a primary killed outright leaves its file).
 * Touches: dataDir/workers.json only.
 */
import { readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

export type WorkerState = 'starting' | 'running' | 'restarting' | 'stopping' | 'stopped';

export interface WorkerStatus {
  index: number;
  /** The worker's process id; null while it waits to be restarted. */
  pid: number | null;
  state: WorkerState;
  /** Times the primary restarted this worker after it died. */
  restarts: number;
  /** When the current process of this worker was started (ms since the epoch). */
  startedAt: number;
  node: string;
  dataDir: string;
}

export interface WorkersStatus {
  primary: number;
  startedAt: number;
  workers: WorkerStatus[];
}

export const STATUS_FILE = 'workers.json';

export function writeWorkersStatus(dataDir: string, status: WorkersStatus): void {
  const file = join(dataDir, STATUS_FILE);
  writeFileSync(`${file}.tmp`, JSON.stringify(status, null, 2) + '\n', { mode: 0o600 });
  renameSync(`${file}.tmp`, file);
}

export function removeWorkersStatus(dataDir: string): void {
  rmSync(join(dataDir, STATUS_FILE), { force: true });
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** The status of the running primary whose data folder is `dataDir`, or null when none runs. */
export function readWorkersStatus(dataDir: string): WorkersStatus | null {
  let status: WorkersStatus;
  try {
    status = JSON.parse(readFileSync(join(dataDir, STATUS_FILE), 'utf8')) as WorkersStatus;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw err;
  }
  return alive(status.primary) ? status : null;
}
