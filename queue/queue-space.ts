/*
 * Free space for the queue: the threshold below which new mail is refused, and a reserve that
 * lets the queue record outcomes and removals on a full disk.
 *
 * Takes: the folders the queue writes to (the spool's and the queue database's), `queue.minFree`
 *   and `queue.reserve`.
 * Gives: `refusal(declaredSize)`, the 452 4.3.1 to answer MAIL FROM or DATA with while free space is
 *   below the threshold (Postfix's queue_minfree: new mail stops well before the last byte, so
 *   outcomes, notices and removals still have room); `release()`, which gives the reserve back
 *   when the queue database cannot commit an outcome or a removal for want of space.
 * Touches: statfs on each folder (cached, refreshed once a second off the SMTP path, so a
 *   command never waits for it); the file dataDir/reserve, written in full (not sparse) so its
 *   blocks are really held, and made again once free space is back above the threshold.
 * Settings: queue.minFree (default the larger of 64MB and 1.5 × limits.maxMessageSize, as Postfix
 *   advises for queue_minfree), queue.reserve, limits.maxMessageSize.
 */
import { open, rm, stat, statfs } from 'node:fs/promises';
import { rmSync } from 'node:fs';
import type { Logger } from 'pino';
import type { Config } from '../mta/mta-config-schema.js';

const REFRESH_MS = 1000;
const RESERVE_CHUNK = 1024 * 1024;
const DEFAULT_MIN_FREE = 64 * 1024 * 1024;

/** Errors that mean "no room" or "the disk failed", as opposed to a fault in the operation itself. */
export function isSpaceError(err: unknown): boolean {
  const code = (err as { code?: unknown })?.code;
  if (typeof code !== 'string') return false;
  return ['ENOSPC', 'EDQUOT', 'EIO', 'SQLITE_FULL'].includes(code) || code.startsWith('SQLITE_IOERR');
}

/** The free-space threshold in bytes (0: no check). */
export function minFreeBytes(config: Config): number {
  return config.queue.minFree ?? Math.max(DEFAULT_MIN_FREE, Math.ceil(1.5 * config.limits.maxMessageSize));
}

export class SpaceGuard {
  /** Least free space among the folders at the last look, in bytes (Infinity before the first). */
  #free = Infinity;
  #timer: NodeJS.Timeout | null = null;
  #refreshing: Promise<void> | null = null;
  #reserveHeld = false;
  #making: Promise<void> | null = null;

  constructor(
    private readonly dirs: string[],
    private readonly reserveFile: string,
    private config: Config,
    private readonly log: Logger,
  ) {}

  /** First look at the folders, the reserve made if there is room, then a look every second. */
  async start(): Promise<void> {
    const left = await stat(this.reserveFile).catch(() => null);
    if (left && left.size === this.config.queue.reserve) this.#reserveHeld = true;
    else if (left) await rm(this.reserveFile, { force: true });
    await this.refresh();
    this.#timer = setInterval(() => void this.refresh(), REFRESH_MS);
    this.#timer.unref();
  }

  reconfigure(config: Config): void {
    this.config = config;
  }

  get free(): number {
    return this.#free;
  }

  get reserveHeld(): boolean {
    return this.#reserveHeld;
  }

  /** Whether new mail of `declaredSize` bytes would leave less than the threshold free. */
  low(declaredSize = 0): boolean {
    const min = minFreeBytes(this.config);
    if (min === 0) return false;
    return this.#free < min + 1.5 * declaredSize;
  }

  refresh(): Promise<void> {
    this.#refreshing ??= this.#look().finally(() => { this.#refreshing = null; });
    return this.#refreshing;
  }

  async #look(): Promise<void> {
    let free = Infinity;
    for (const dir of this.dirs) {
      try {
        const s = await statfs(dir);
        free = Math.min(free, s.bavail * s.bsize);
      } catch (err) {
        this.log.warn({ err, dir }, 'cannot read the free space of a queue folder');
      }
    }
    const wasLow = this.low();
    this.#free = free;
    if (!wasLow && this.low()) this.log.error({ free, minFree: minFreeBytes(this.config) }, 'free space below queue.minFree: new mail is refused with 452 4.3.1');
    if (wasLow && !this.low()) this.log.info({ free }, 'free space back above queue.minFree: new mail is accepted again');
    const want = this.config.queue.reserve;
    // The reserve is made only when it leaves the threshold intact: it must never be what makes the disk low.
    if (!this.#reserveHeld && want > 0 && !this.#making && free - want >= minFreeBytes(this.config)) {
      this.#making = this.#makeReserve(want).finally(() => { this.#making = null; });
      await this.#making;
    }
  }

  async #makeReserve(bytes: number): Promise<void> {
    let fh;
    try {
      fh = await open(this.reserveFile, 'w', 0o600);
      const chunk = Buffer.alloc(Math.min(RESERVE_CHUNK, bytes));
      for (let written = 0; written < bytes;) {
        const { bytesWritten } = await fh.write(chunk, 0, Math.min(chunk.length, bytes - written));
        written += bytesWritten;
      }
      await fh.datasync();
      await fh.close();
      this.#reserveHeld = true;
      this.log.info({ file: this.reserveFile, bytes }, 'space reserve held for the queue');
    } catch (err) {
      await fh?.close().catch(() => undefined);
      await rm(this.reserveFile, { force: true }).catch(() => undefined);
      this.log.warn({ err, file: this.reserveFile }, 'could not make the space reserve');
    }
  }

  /**
   * Gives the reserve back so a commit that failed for want of space can be retried; true when
   * there was one to give. Synchronous: the retry follows at once.
   */
  release(): boolean {
    if (!this.#reserveHeld) return false;
    this.#reserveHeld = false;
    try {
      rmSync(this.reserveFile, { force: true });
    } catch (err) {
      this.log.error({ err, file: this.reserveFile }, 'could not remove the space reserve');
      return false;
    }
    this.log.warn({ file: this.reserveFile }, 'disk full: space reserve released so the queue can record outcomes and removals');
    return true;
  }

  stop(): void {
    if (this.#timer) clearInterval(this.#timer);
    this.#timer = null;
  }
}
