/*
 * The spool: one file per accepted message, holding the DATA bytes exactly as received (after
 * dot-unstuffing), written once and never rewritten. Headers Ichidan adds live in the queue
 * database and are streamed in front of this file at delivery.
 *
 * A writer streams DATA into `<dir>/<id>` as it arrives (bounded memory whatever the size), then
 * `commit()` makes it durable: fdatasync of the file and an fsync of the folder, the folder sync
 * shared by every writer that committed meanwhile (group commit). A writer whose message is refused
 * deletes its file; at startup, a file without a queue record is moved to `<dir>/corrupt/`, where
 * it stays until an operator deletes it or, never acknowledged, queue.leftoverRetention has passed
 * (queue-corrupt.ts). Files are made 0600 and folders 0700, whatever the umask. A message small
 * enough for the spool journal (queue-journal.ts) is made durable there instead: its file is then
 * closed without a sync (`finishUnsynced`), and synced later only if its journal segment has to go
 * while it is still queued, or at a start after a crash (`syncFile`).
 * Every fsync (a file's fdatasync, a folder's shared sync) is timed into `fsyncs`
 * (base/base-latency-window.ts): the pressure signal and the fsync histogram read it.
 */
import { createReadStream, type ReadStream } from 'node:fs';
import { mkdir, open, readdir, readFile, rename, stat, unlink, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { LatencyWindow } from '../base/base-latency-window.js';

/** Runs `fsync` on a folder, sharing one sync among all callers that arrive while one is running. */
class GroupedDirSync {
  #running: Promise<void> | null = null;
  #next: Promise<void> | null = null;
  #handle: Promise<FileHandle> | null = null;
  constructor(private readonly dir: string, private readonly timing: LatencyWindow) {}

  sync(): Promise<void> {
    if (!this.#running) {
      this.#running = this.#syncOnce().finally(() => { this.#running = null; });
      return this.#running;
    }
    // A sync already running may have started before our file's entry was made: wait for the next one.
    if (!this.#next) {
      this.#next = this.#running.catch(() => undefined).then(() => {
        this.#next = null;
        return this.sync();
      });
    }
    return this.#next;
  }

  async #syncOnce(): Promise<void> {
    // One handle on the folder, kept open: no open/close per sync.
    this.#handle ??= open(this.dir, 'r');
    try {
      const handle = await this.#handle;
      await this.timing.time(() => handle.sync());
    } catch (err) {
      this.#handle = null;
      throw err;
    }
  }

  async close(): Promise<void> {
    const h = this.#handle;
    this.#handle = null;
    if (h) await (await h).close().catch(() => undefined);
  }
}

/**
 * Messages up to this size are also kept in memory: the journal record, the scan and the first
 * delivery attempt take the bytes from there instead of reading the file back. The writer's own
 * buffer (its highWaterMark) may hold as much while the disk lags, so a session holds no more than
 * it could already; a "64 KB" message with its header fields is just past 64 KB.
 */
export const KEEP_IN_MEMORY_MAX = 256 * 1024;

/** Removes a file; one that is already gone counts as removed (one unlink, where rm would lstat it twice first). */
async function removeFile(path: string): Promise<void> {
  try {
    await unlink(path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
}

export class SpoolWriter extends Writable {
  bytes = 0;
  /** The bytes written, while they fit in KEEP_IN_MEMORY_MAX (null once they do not). */
  kept: Buffer[] | null = [];
  #fh: FileHandle;
  #closed = false;

  /**
   * `room`, for new mail, is asked before each write whether it may take that many bytes
   * (queue-space.ts); a refusal fails the write with ENOSPC, so the message is refused with 452.
   */
  constructor(readonly id: string, readonly path: string, fh: FileHandle, private readonly spool: Spool, private readonly room?: (bytes: number) => boolean) {
    super({ highWaterMark: 256 * 1024 });
    this.#fh = fh;
  }

  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (err?: Error | null) => void): void {
    this._writev([{ chunk }], cb);
  }

  override _writev(chunks: { chunk: Buffer }[], cb: (err?: Error | null) => void): void {
    const buffers = chunks.map((c) => c.chunk);
    const total = buffers.reduce((n, b) => n + b.length, 0);
    if (this.room && !this.room(total)) {
      return cb(Object.assign(new Error('free space below queue.minFree: new mail is refused'), { code: 'ENOSPC' }));
    }
    if (this.kept) {
      if (this.bytes + total <= KEEP_IN_MEMORY_MAX) this.kept.push(...buffers);
      else this.kept = null;
    }
    this.#writeAll(buffers, total).then(() => { this.bytes += total; cb(); }, cb);
  }

  async #writeAll(buffers: Buffer[], total: number): Promise<void> {
    let written = 0;
    while (written < total) {
      const { bytesWritten } = await this.#fh.writev(written === 0 ? buffers : [Buffer.concat(buffers).subarray(written)]);
      written += bytesWritten;
    }
  }

  /**
   * Waits until every byte handed to the writer is in the file (and in `kept`), without syncing,
   * and checks that all `expectedBytes` reached it: what the engines read must be the whole message.
   */
  async flush(expectedBytes?: number): Promise<void> {
    if (!this.writableFinished) {
      await new Promise<void>((resolve, reject) => {
        this.end((err?: Error | null) => (err ? reject(err) : resolve()));
      });
    }
    if (this.errored) throw this.errored;
    if (expectedBytes !== undefined && this.bytes !== expectedBytes) {
      throw Object.assign(new Error(`spool file ${this.id} holds ${this.bytes} of ${expectedBytes} bytes`), { code: 'EIO' });
    }
  }

  /**
   * Waits for every queued write, checks that all `expectedBytes` reached the file, then makes the
   * file and its folder entry durable. Throws (and the message must be refused) on any write error.
   */
  async commit(expectedBytes?: number): Promise<void> {
    await this.flush(expectedBytes);
    if (this.spool.fsync) await this.spool.fsyncs.time(() => this.#fh.datasync());
    await this.#close();
    if (this.spool.fsync) await this.spool.dirSync.sync();
  }

  /**
   * Waits for every queued write, checks that all `expectedBytes` reached the file, and closes it
   * without syncing: the message is made durable elsewhere (queue-journal.ts), this file is the
   * working copy.
   */
  async finishUnsynced(expectedBytes?: number): Promise<void> {
    await this.flush(expectedBytes);
    await this.#close();
  }

  /** Drops the file: the message was refused or could not be stored. */
  async discard(): Promise<void> {
    this.destroy();
    await this.#close().catch(() => undefined);
    await removeFile(this.path);
  }

  async #close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await this.#fh.close();
  }
}

export class Spool {
  readonly dirSync: GroupedDirSync;
  readonly corruptDir: string;
  /** How long each fsync took (files and the folder alike). */
  readonly fsyncs = new LatencyWindow();

  constructor(readonly dir: string, readonly fsync: boolean) {
    this.dirSync = new GroupedDirSync(dir, this.fsyncs);
    this.corruptDir = join(dir, 'corrupt');
  }

  async init(): Promise<void> {
    await mkdir(this.corruptDir, { recursive: true, mode: 0o700 });
  }

  path(id: string): string {
    return join(this.dir, id);
  }

  async createWriter(id: string, room?: (bytes: number) => boolean): Promise<SpoolWriter> {
    const path = this.path(id);
    const fh = await open(path, 'wx', 0o600);
    return new SpoolWriter(id, path, fh, this, room);
  }

  read(id: string): ReadStream {
    return createReadStream(this.path(id), { highWaterMark: 64 * 1024 });
  }

  async size(id: string): Promise<number | null> {
    try {
      return (await stat(this.path(id))).size;
    } catch {
      return null;
    }
  }

  /**
   * Makes a file written without a sync durable (fdatasync; the folder's entry with `dirSync`).
   * False when the file is gone (its message was swept meanwhile).
   */
  async syncFile(id: string): Promise<boolean> {
    let fh: FileHandle;
    try {
      fh = await open(this.path(id), 'r');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false;
      throw err;
    }
    try {
      await this.fsyncs.time(() => fh.datasync());
    } finally {
      await fh.close();
    }
    return true;
  }

  /** Whether a message's file holds exactly these bytes (false when it is missing). */
  async holdsBytes(id: string, bytes: Buffer): Promise<boolean> {
    if ((await this.size(id)) !== bytes.length) return false;
    try {
      return (await readFile(this.path(id))).equals(bytes);
    } catch {
      return false;
    }
  }

  /** Writes a message's file anew from its journal copy (it was lost or cut short by a crash) and syncs it. */
  async rewriteFromJournal(id: string, body: Buffer): Promise<void> {
    const fh = await open(this.path(id), 'w', 0o600);
    try {
      await fh.writeFile(body);
      await fh.datasync();
    } finally {
      await fh.close();
    }
  }

  async remove(id: string): Promise<void> {
    await removeFile(this.path(id));
  }

  /** Message files in the spool (the corrupt folder excluded). */
  async list(): Promise<string[]> {
    const entries = await readdir(this.dir, { withFileTypes: true });
    return entries.filter((e) => e.isFile()).map((e) => e.name);
  }

  /** Files in the corrupt folder. */
  async listAside(): Promise<string[]> {
    const entries = await readdir(this.corruptDir, { withFileTypes: true });
    return entries.filter((e) => e.isFile()).map((e) => e.name);
  }

  async close(): Promise<void> {
    await this.dirSync.close();
  }

  async setAside(id: string): Promise<void> {
    await rename(this.path(id), this.asidePath(id));
  }

  /** Where a file set aside as corrupt is kept. */
  asidePath(id: string): string {
    return join(this.corruptDir, id);
  }

  async asideSize(id: string): Promise<number | null> {
    try {
      return (await stat(this.asidePath(id))).size;
    } catch {
      return null;
    }
  }

  /** A file set aside goes back into the spool, durably (an operator requeued its entry). */
  async restore(id: string): Promise<void> {
    await rename(this.asidePath(id), this.path(id));
    if (this.fsync) await this.dirSync.sync();
  }

  async removeAside(id: string): Promise<void> {
    await removeFile(this.asidePath(id));
  }
}
