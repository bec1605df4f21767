/*
 * The run marker: `<dataDir>/running`, written (and synced) when the queue opens and removed when
 * it closes with its database complete and synced. It tells the next start how the last run ended:
 *   - no marker: a clean stop;
 *   - a marker of this boot whose process is gone: the process stopped (a crash, SIGKILL); the
 *     kernel still had every write, so the unsynced commits of the queue database are whole;
 *   - a marker of another boot: the machine stopped with the queue open; commits made since the
 *     last sync point (queue-store-worker.ts) may be lost or half written, so the database is
 *     checked (queue-store-check.ts) before it is used.
 * A marker naming a process of this boot that still runs (the same pid and start time) means
 * another Ichidan has this data folder open: the start is refused, since two writers would each
 * take the other's journal and spool for leftovers.
 * Takes: the data folder. Gives: the last stop's kind; EDATADIRINUSE when the folder is in use;
 * `beginRun`, what the queue does with it at start (queue/index.ts).
 */
import { readFileSync } from 'node:fs';
import { mkdir, open, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import type { Logger } from 'pino';
import { checkAfterCrash } from './queue-store-check.js';

export type LastStop = 'clean' | 'process' | 'machine';

interface Marker { bootId: string; pid: number; started: string; startedAt: number }

const NAME = 'running';

/** This boot's id (Linux); empty where there is none, and then every marker left counts as the machine's stop. */
export function bootId(): string {
  try {
    return readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();
  } catch {
    return '';
  }
}

/** A process's start time in clock ticks since boot (field 22 of /proc/PID/stat), or null when it is not running. */
export function processStart(pid: number): string | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // The command name (field 2) is in parentheses and may hold spaces: fields are counted after it.
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19] ?? null;
  } catch {
    return null;
  }
}

export class RunMarker {
  readonly path: string;

  constructor(readonly dataDir: string, private readonly boot = bootId()) {
    this.path = join(dataDir, NAME);
  }

  /**
   * Reads how the last run ended and marks this one as running (durably). `first` runs before the
   * marker is replaced: a start stopped during it finds the last run's marker again, and does it again.
   */
  async begin(first?: (lastStop: LastStop, since?: number) => Promise<void>): Promise<{ lastStop: LastStop; since?: number }> {
    const last = await this.#read();
    let lastStop: LastStop = 'clean';
    if (last) {
      const sameBoot = this.boot !== '' && last.bootId === this.boot;
      if (sameBoot && last.pid !== process.pid && processStart(last.pid) === last.started) {
        throw Object.assign(new Error(`the data folder ${this.dataDir} is in use by another running Ichidan (pid ${last.pid}, ${this.path})`), { code: 'EDATADIRINUSE' });
      }
      lastStop = sameBoot ? 'process' : 'machine';
    }
    await first?.(lastStop, last?.startedAt);
    const marker: Marker = { bootId: this.boot, pid: process.pid, started: processStart(process.pid) ?? '', startedAt: Date.now() };
    const fh = await open(this.path, 'w', 0o600);
    try {
      await fh.writeFile(`${JSON.stringify(marker)}\n`);
      await fh.datasync();
    } finally {
      await fh.close();
    }
    await this.#syncDir();
    return { lastStop, since: last?.startedAt };
  }

  /** The run ended with everything on the device: the next start need not check. */
  async end(): Promise<void> {
    await rm(this.path, { force: true });
    await this.#syncDir();
  }

  async #read(): Promise<Marker | null> {
    let text: string;
    try {
      text = await readFile(this.path, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
      throw err;
    }
    try {
      const m = JSON.parse(text) as Partial<Marker>;
      if (typeof m.bootId === 'string' && typeof m.pid === 'number') return { bootId: m.bootId, pid: m.pid, started: String(m.started ?? ''), startedAt: Number(m.startedAt ?? 0) };
    } catch {
      // Torn by the machine's stop as it was written: that run's queue was open.
    }
    return { bootId: '', pid: 0, started: '', startedAt: 0 };
  }

  async #syncDir(): Promise<void> {
    const dir = await open(this.dataDir, 'r');
    try {
      await dir.sync();
    } finally {
      await dir.close();
    }
  }
}

/**
 * Marks the run in the data folder before the database opens; after a stop of the machine with the
 * queue open, checks the database first and sets a damaged one aside (queue-store-check.ts).
 */
export async function beginRun(dataDir: string, log: Logger): Promise<RunMarker> {
  await mkdir(dataDir, { recursive: true, mode: 0o700 });
  const marker = new RunMarker(dataDir);
  await marker.begin(async (lastStop, since) => {
    if (lastStop === 'process') log.warn({ since }, 'the last run stopped without closing the queue: its journal is replayed');
    if (lastStop !== 'machine') return;
    const file = join(dataDir, 'queue.db');
    log.warn({ since, file }, 'the machine stopped while the queue was open: checking the queue database');
    const check = await checkAfterCrash(file);
    if (!check.sound) {
      log.error({ problems: check.problems, setAside: check.setAside },
        'queue database damaged: set aside, and a new one started (journaled messages are inserted again, other spool files set aside as damaged)');
    }
  });
  return marker;
}
