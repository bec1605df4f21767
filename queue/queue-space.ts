/*
 * Free space for the queue: the threshold below which new mail is refused, and a reserve that
 * lets the queue record outcomes and removals on a full disk.
 *
 * Takes: the folders the queue writes to (the spool's and the queue database's), `queue.minFree`
 *   and `queue.reserve`; the bytes new mail is about to write to the spool.
 * Gives: `low(declaredSize)`, whether MAIL FROM or DATA is to be answered 452 4.3.1 (Postfix's
 *   queue_minfree: new mail stops well before the last byte, so outcomes, notices and removals
 *   still have room); `take(bytes)`, asked before each spool write of new mail, so that many
 *   transfers at once cannot together write past the threshold between two looks at the disk;
 *   `release()`, which gives the reserve back when the queue database cannot commit an outcome or
 *   a removal for want of space. From a release until the reserve is made again, new mail is
 *   refused outright (`low()`, `take()` and `released`): the room given back is for outcomes,
 *   purges and removals only.
 * Touches: statfs on each folder (cached, refreshed once a second off the SMTP path, so a
 *   command never waits for it; what new mail wrote since is counted against it); the file
 *   dataDir/reserve, written in full with random bytes (not sparse, and not compressible: a
 *   compressing or deduplicating filesystem would keep zeros in no blocks) so its blocks are
 *   really held, and made again once free space is back above the threshold plus its size.
 * Also gives `freeShare`: the least free share (available blocks over all blocks) among the
 *   folders' file systems at the last look, which the admission's diskFree signal reads.
 * Settings: queue.minFree (default the larger of 64MB and 1.5 × limits.maxMessageSize, as Postfix
 *   advises for queue_minfree), queue.reserve, limits.maxMessageSize.
 */
import { open, rm, stat, statfs } from 'node:fs/promises';
import { rmSync } from 'node:fs';
import { randomFillSync } from 'node:crypto';
import type { Logger } from 'pino';
import type { QueueConfig } from './queue-config.js';

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
export function minFreeBytes(config: QueueConfig): number {
  return config.queue.minFree ?? Math.max(DEFAULT_MIN_FREE, Math.ceil(1.5 * config.limits.maxMessageSize));
}

export class SpaceGuard {
  /** Least free space among the folders at the last look, in bytes (Infinity before the first). */
  #free = Infinity;
  /** Least free share of the folders' file systems at the last look (null before the first, or when none could be read). */
  #freeShare: number | null = null;
  #timer: NodeJS.Timeout | null = null;
  #refreshing: Promise<void> | null = null;
  #reserveHeld = false;
  /** The reserve was given back and is not made again yet: new mail is refused meanwhile. */
  #released = false;
  /** Bytes new mail wrote since the last look (not yet in `#free`). */
  #written = 0;
  #making: Promise<void> | null = null;

  constructor(
    private readonly dirs: string[],
    private readonly reserveFile: string,
    private config: QueueConfig,
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

  reconfigure(config: QueueConfig): void {
    this.config = config;
  }

  get free(): number {
    return this.#free;
  }

  /** The least free share (0–1) of the folders' file systems at the last look; null when unknown. */
  get freeShare(): number | null {
    return this.#freeShare;
  }

  get reserveHeld(): boolean {
    return this.#reserveHeld;
  }

  /** The reserve was given back and is not made again yet. */
  get released(): boolean {
    return this.#released;
  }

  /** Whether new mail of `declaredSize` bytes would leave less than the threshold free. */
  low(declaredSize = 0): boolean {
    if (this.#released) return true;
    const min = this.#newMailMin();
    if (min === 0) return false;
    return this.#free - this.#written < min + 1.5 * declaredSize;
  }

  /**
   * New mail is about to write `bytes` to the spool: counted and true when that leaves the
   * threshold free, false (nothing counted) when it does not or while the reserve is released.
   */
  take(bytes: number): boolean {
    if (this.#released) return false;
    const min = this.#newMailMin();
    if (min > 0 && this.#free - this.#written - bytes < min) return false;
    this.#written += bytes;
    return true;
  }

  /**
   * The free space new mail must leave: the threshold, plus the reserve's size while the reserve is
   * not held (not made yet, or given back), so new mail never takes the room it needs, also after a
   * restart that found it missing.
   */
  #newMailMin(): number {
    const min = minFreeBytes(this.config);
    if (min === 0) return 0;
    return this.#reserveHeld ? min : min + this.config.queue.reserve;
  }

  refresh(): Promise<void> {
    this.#refreshing ??= this.#look().finally(() => { this.#refreshing = null; });
    return this.#refreshing;
  }

  async #look(): Promise<void> {
    // Writes counted before the look are in what statfs says; those counted during it may be
    // too, and stay counted until the next look (erring on the side of less room).
    const counted = this.#written;
    let free = Infinity;
    let share: number | null = null;
    for (const dir of this.dirs) {
      try {
        const s = await statfs(dir);
        free = Math.min(free, s.bavail * s.bsize);
        if (s.blocks > 0) share = Math.min(share ?? 1, s.bavail / s.blocks);
      } catch (err) {
        this.log.warn({ err, dir }, 'cannot read the free space of a queue folder');
      }
    }
    const wasLow = this.low();
    this.#free = free;
    this.#freeShare = share;
    this.#written -= counted;
    if (!wasLow && this.low()) this.log.error({ free, minFree: minFreeBytes(this.config) }, 'free space below queue.minFree: new mail is refused with 452 4.3.1');
    if (wasLow && !this.low()) this.log.info({ free }, 'free space back above queue.minFree: new mail is accepted again');
    const want = this.config.queue.reserve;
    // No reserve is configured any more (a reload): there is nothing to wait for.
    if (this.#released && want === 0) this.#released = false;
    // The reserve is made only when it leaves the threshold intact: it must never be what makes the disk low.
    if (!this.#reserveHeld && want > 0 && !this.#making && free - this.#written - want >= minFreeBytes(this.config)) {
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
        randomFillSync(chunk);
        const { bytesWritten } = await fh.write(chunk, 0, Math.min(chunk.length, bytes - written));
        written += bytesWritten;
      }
      await fh.datasync();
      await fh.close();
      this.#reserveHeld = true;
      this.log.info({ file: this.reserveFile, bytes }, 'space reserve held for the queue');
      if (this.#released) {
        this.#released = false;
        this.log.info({ free: this.#free }, 'space reserve made again: new mail is accepted again');
      }
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
    this.#released = true;
    this.log.warn({ file: this.reserveFile }, 'disk full: space reserve released so the queue can record outcomes and removals; new mail is refused until it is made again');
    return true;
  }

  stop(): void {
    if (this.#timer) clearInterval(this.#timer);
    this.#timer = null;
  }
}
