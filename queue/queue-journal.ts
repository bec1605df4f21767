/*
 * The spool journal: where an accepted message is made durable before its 250, many messages per
 * fdatasync.
 *
 * A spool file (queue-spool.ts) is one file per message: making it durable costs an fdatasync of
 * the file and an fsync of its folder, each a filesystem-journal commit of several 4 KB metadata
 * blocks, for every message. Instead, messages up to JOURNAL_BODY_MAX are appended here — one
 * record holding the queue record and the body — and every message that reached its end of data
 * while the previous append was being synced goes in the next one: one write and one fdatasync for
 * the batch (group commit). The spool file stays the working copy the rest of the queue reads; it
 * is written once and not synced, and is usually gone (delivered, removed) before the kernel would
 * write it back, so the device sees the message about once. The queue database then needs no
 * fsync for a new message either (queue-store.ts `durable: false`).
 *
 * Segments: `<dir>/<generation>.seg`, appended to until SEGMENT_BYTES, then a new one is started.
 * A record: a 24-byte header (magic, the segment's generation, kind, lengths, CRC-32 of the rest)
 * then the id, the record as JSON and the body. Kinds: `message`; `outcome` (final recipient
 * states of an attempt, committed to the database without a sync); and `dropped` (a message swept
 * from the queue, or one whose queue record could not be written: no 250 was sent). Reading stops
 * at the first record that is torn, fails its CRC or carries another generation (a recycled
 * segment's older contents): no record after it was ever synced on its own. A batch that fails
 * (write or fdatasync) was answered with an error, yet what it wrote may be whole and valid: the
 * segment is cut back to its last synced size and synced, so that no record of it can be read
 * back; should that fail too, the batch's messages are journaled `dropped` at the head of the next
 * batch (in a new segment, read after this one). The next batch starts a new segment either way.
 * A segment whose messages are all dropped is recycled (kept for reuse: overwriting blocks already
 * written costs no filesystem-journal commit, growing a file does) or deleted, oldest first, after
 * one synced commit of the database (its outcomes are then there for good). When
 * more than MAX_SEGMENTS are open, the oldest one's remaining messages are settled in place (their
 * spool files fdatasync'ed and the queue database synced, by `settle`) so that it can go; `settled`
 * counts them. Retiring runs beside the writing loop, never in it: no append waits on a settle.
 * At startup (queue-journal-replay.ts) whatever the segments hold is made durable in the spool and
 * the database, then they are all recycled: a new start writes into a new generation. A clean stop
 * does the same (`retireAll`), so the journal only ever matters after an unclean one.
 */
import { crc32 } from 'node:zlib';
import { mkdir, open, readdir, readFile, rename, rm, statfs, type FileHandle } from 'node:fs/promises';
import { basename, join } from 'node:path';
import type { LatencyWindow } from '../base/base-latency-window.js';

/** Bodies up to this size go into the journal; larger ones are synced in their spool file. */
export const JOURNAL_BODY_MAX = 1024 * 1024;
const SEGMENT_BYTES = 4 * 1024 * 1024;
const MAX_SEGMENTS = 16;
/** Recycled segments kept for reuse. */
const SPARES = 10;
/** A growing segment is zeroed this far ahead of its records, with one sync (see `#prepare`). */
const PREPARE_BYTES = 1024 * 1024;
/** Zeroing ahead uses at most this share of the free space. */
const PREPARE_SHARE = 0.25;
/**
 * Zeroing ahead writes each byte of a segment twice; growing it costs a commit of the file
 * system's journal (some 16 KB) per sync instead. So segments are zeroed ahead only while batches
 * average less than this.
 */
const ZERO_BELOW = 16 * 1024;
/** An outcome appended lazily waits at most this long for a batch to go with. */
const LAZY_MS = 200;
const ZEROES = Buffer.alloc(256 * 1024);

/** Tunable for tests: how many segments may be open, and how many spares are kept. */
export interface JournalLimits { maxSegments: number; spares: number }
const LIMITS: JournalLimits = { maxSegments: MAX_SEGMENTS, spares: SPARES };
const MAGIC = 0x314a4349; // "ICJ1"
const HEADER = 24;
const KIND = { message: 1, dropped: 2, outcome: 3 } as const;
const KIND_NAMES = ['', 'message', 'dropped', 'outcome'] as const;

/** A message as read back: its queue record (JSON as given to `append`) and body. */
export interface JournaledMessage { id: string; record: unknown; body: Buffer }
/**
 * What `load` reads back: the messages not dropped, and every outcome recorded, in order — those of
 * dropped messages too: the sweep journals a drop while the message's done state in the database
 * may still be unsynced, so after a power cut its row can be active again and only its outcome
 * keeps it from being delivered again (replay applies outcomes to active rows only).
 */
export interface JournalContents { messages: JournaledMessage[]; outcomes: Array<{ id: string; record: unknown }> }

/** `prepared`: the file's size, records end at `size`; zeroes (or a recycled segment's older records) between. */
interface Segment { generation: number; path: string; fh: FileHandle; size: number; prepared: number; live: Set<string>; broken: boolean }
interface Entry { kind: keyof typeof KIND; id: string; record?: Buffer; body?: Buffer }
interface Waiter { entries: Entry[]; resolve: () => void; reject: (err: Error) => void; lazy: boolean }

const segmentName = (generation: number) => `${String(generation).padStart(10, '0')}.seg`;
const generationOf = (name: string): number | null => (/^\d{10}\.seg$/.test(name) ? Number(name.slice(0, 10)) : null);

function encode(generation: number, e: Entry): Buffer[] {
  const id = Buffer.from(e.id, 'utf8');
  const record = e.record ?? Buffer.alloc(0);
  const body = e.body ?? Buffer.alloc(0);
  const header = Buffer.alloc(HEADER);
  header.writeUInt32LE(MAGIC, 0);
  header.writeUInt32LE(generation, 4);
  header.writeUInt8(KIND[e.kind], 8);
  header.writeUInt16LE(id.length, 10);
  header.writeUInt32LE(record.length, 12);
  header.writeUInt32LE(body.length, 16);
  let crc = crc32(header.subarray(4, 20));
  crc = crc32(id, crc);
  crc = crc32(record, crc);
  crc = crc32(body, crc);
  header.writeUInt32LE(crc, 20);
  return [header, id, record, body];
}

/** The records of one segment's generation, up to the first that is not whole and valid. */
export function decodeSegment(data: Buffer, generation: number): Array<{ kind: keyof typeof KIND; id: string; record: Buffer; body: Buffer }> {
  const out: Array<{ kind: keyof typeof KIND; id: string; record: Buffer; body: Buffer }> = [];
  let at = 0;
  while (at + HEADER <= data.length) {
    const h = data.subarray(at, at + HEADER);
    if (h.readUInt32LE(0) !== MAGIC || h.readUInt32LE(4) !== generation) break;
    const kind = KIND_NAMES[h.readUInt8(8)] || null;
    const idLen = h.readUInt16LE(10), recLen = h.readUInt32LE(12), bodyLen = h.readUInt32LE(16);
    const end = at + HEADER + idLen + recLen + bodyLen;
    if (!kind || end > data.length) break;
    const rest = data.subarray(at + HEADER, end);
    if (crc32(rest, crc32(h.subarray(4, 20))) !== h.readUInt32LE(20)) break;
    out.push({ kind, id: rest.subarray(0, idLen).toString('utf8'), record: rest.subarray(idLen, idLen + recLen), body: rest.subarray(idLen + recLen) });
    at = end;
  }
  return out;
}

export class SpoolJournal {
  /** Messages settled in place so that their segment could go (see the header). */
  settled = 0;
  /** Segments recycled or deleted. */
  retired = 0;
  /** Made durable in the spool and the database, so that the oldest segment can go: set by the queue. */
  settle: (ids: string[]) => Promise<void> = () => Promise.reject(new Error('no settle function'));
  readonly #segments: Segment[] = [];
  readonly #spares: string[] = [];
  /** Message id → the segment holding its record, while it is in the queue. */
  readonly #where = new Map<string, Segment>();
  /** Appended, but the queue record not written yet: its segment cannot be settled meanwhile. */
  readonly #unstored = new Set<string>();
  #waiting: Waiter[] = [];
  #flushing: Promise<void> | null = null;
  /** Retiring runs beside the writing loop: settling fdatasyncs files one by one, and no 250 may wait on that. */
  #retiring: Promise<void> | null = null;
  #retireAgain = false;
  #generation = 0;
  #dirHandle: FileHandle | null = null;
  /** The last run's segments, read by `load`. */
  readonly #leftover: string[] = [];

  #lastStart = -Infinity;
  /** Messages of a failed batch whose records could not be cut off: journaled `dropped` with the next batch. */
  #undo: string[] = [];

  #lazyTimer: NodeJS.Timeout | null = null;
  /** Bytes per batch, a moving average (see ZERO_BELOW). */
  #batchBytes = 0;

  /** `windowMs`: batches start at most this often (queue.commitWindow), so that more messages share each fdatasync. */
  constructor(readonly dir: string, private readonly fsyncs: LatencyWindow, private readonly segmentBytes = SEGMENT_BYTES, private readonly windowMs = 0,
    private readonly limits: JournalLimits = LIMITS) {}

  /**
   * Reads every segment left by the last run (its messages minus those dropped) and remembers the
   * segments, to be recycled by `recycleAll` once their messages are durable elsewhere.
   */
  async load(): Promise<JournalContents> {
    await mkdir(this.dir, { recursive: true, mode: 0o700 });
    const messages = new Map<string, JournaledMessage>();
    const outcomes: Array<{ id: string; record: unknown }> = [];
    const dropped = new Set<string>();
    for (const name of (await readdir(this.dir)).sort()) {
      const generation = generationOf(name);
      if (generation === null) {
        const spare = /^spare-(\d{10})\.seg$/.exec(name);
        if (spare) {
          // Its older records carry generations up to its own: every new one must be above them.
          this.#generation = Math.max(this.#generation, Number(spare[1]));
          this.#spares.push(join(this.dir, name));
        }
        continue;
      }
      this.#generation = Math.max(this.#generation, generation);
      for (const r of decodeSegment(await readFile(join(this.dir, name)), generation)) {
        if (r.kind === 'dropped') { dropped.add(r.id); messages.delete(r.id); continue; }
        const record: unknown = JSON.parse(r.record.toString('utf8'));
        if (r.kind === 'outcome') outcomes.push({ id: r.id, record });
        else if (!dropped.has(r.id)) messages.set(r.id, { id: r.id, record, body: Buffer.from(r.body) });
      }
      this.#leftover.push(join(this.dir, name));
    }
    return { messages: [...messages.values()], outcomes };
  }

  /** The last run's segments are no longer needed (their messages are durable elsewhere): recycled. */
  async recycleAll(): Promise<void> {
    for (const path of this.#leftover.splice(0)) await this.#recycle(path);
    await this.#syncDir();
  }

  /** Whether a message's record is in a segment still in use. */
  holds(id: string): boolean {
    return this.#where.has(id);
  }

  /** Appends a message; resolves once it is durable (with every other record of its batch). */
  append(id: string, record: unknown, body: Buffer): Promise<void> {
    this.#unstored.add(id);
    return this.#enqueue([{ kind: 'message', id, record: Buffer.from(JSON.stringify(record), 'utf8'), body }])
      .catch((err: Error) => { this.#unstored.delete(id); throw err; });
  }

  /**
   * Appends a delivery outcome already committed to the queue database without a sync (final
   * recipient states); resolves once durable. A segment holding one is only recycled after a
   * synced commit of the database. A `lazy` one starts no batch of its own: it goes with the next
   * one, or after LAZY_MS (losing it to a crash of the machine meanwhile means a second delivery,
   * never a lost message).
   */
  outcome(id: string, record: unknown, opts: { lazy?: boolean } = {}): Promise<void> {
    return this.#enqueue([{ kind: 'outcome', id, record: Buffer.from(JSON.stringify(record), 'utf8') }], opts.lazy ?? false);
  }

  /** The message's queue record is written: its segment may now be settled if it has to go. */
  stored(id: string): void {
    this.#unstored.delete(id);
  }

  /**
   * Records that these messages are no longer in the queue (swept, or never acknowledged);
   * resolves once that is durable. Ids not held here are ignored.
   */
  drop(ids: string[]): Promise<void> {
    const held = ids.filter((id) => this.#where.has(id));
    for (const id of held) this.#unstored.delete(id);
    // Lazy outcomes waiting go first either way: the caller removes files next (a message too large
    // for the journal has only its outcome here).
    if (held.length === 0) return this.#waiting.length > 0 ? this.#enqueue([]) : Promise.resolve();
    return this.#enqueue(held.map((id) => ({ kind: 'dropped' as const, id })));
  }

  #enqueue(entries: Entry[], lazy = false): Promise<void> {
    return new Promise((resolve, reject) => {
      this.#waiting.push({ entries, resolve, reject, lazy });
      this.#kick();
    });
  }

  /**
   * Starts the writing loop unless it runs; one that has just ended is started again for what came
   * meanwhile. Only lazy entries waiting: a timer starts it after LAZY_MS, unless a batch comes first.
   */
  #kick(force = false): void {
    if (this.#flushing || this.#waiting.length === 0) return;
    if (!force && this.#waiting.every((w) => w.lazy)) {
      this.#lazyTimer ??= setTimeout(() => { this.#lazyTimer = null; this.#kick(true); }, LAZY_MS);
      return;
    }
    if (this.#lazyTimer) clearTimeout(this.#lazyTimer);
    this.#lazyTimer = null;
    this.#flushing = this.#flushLoop().finally(() => {
      this.#flushing = null;
      this.#kick();
    });
  }

  async #flushLoop(): Promise<void> {
    while (this.#waiting.length > 0) {
      const wait = this.windowMs - (performance.now() - this.#lastStart);
      if (wait > 0) await new Promise((r) => setTimeout(r, wait));
      this.#lastStart = performance.now();
      const batch = this.#waiting.splice(0);
      try {
        await this.#writeBatch(batch.flatMap((w) => w.entries));
        for (const w of batch) w.resolve();
      } catch (err) {
        for (const w of batch) w.reject(err as Error);
      }
      this.#retireSoon();
    }
  }

  /** Starts retiring unless it runs; if it does, it looks again once done (a batch may have emptied a segment). */
  #retireSoon(): void {
    if (this.#retiring) {
      this.#retireAgain = true;
      return;
    }
    this.#retiring = this.#retire().catch(() => undefined).finally(() => {
      this.#retiring = null;
      if (!this.#retireAgain) return;
      this.#retireAgain = false;
      this.#retireSoon();
    });
  }

  /** Until nothing waits (lazy entries are written now) and neither a batch nor retiring is under way. */
  async #idle(): Promise<void> {
    this.#kick(true);
    while (this.#flushing || this.#retiring) {
      await (this.#flushing ?? this.#retiring);
      this.#kick(true);
    }
  }

  async #writeBatch(given: Entry[]): Promise<void> {
    const undo = this.#undo.splice(0);
    const entries: Entry[] = [...undo.map((id) => ({ kind: 'dropped' as const, id })), ...given];
    let seg: Segment | undefined;
    try {
      seg = this.#segments.at(-1);
      if (!seg || seg.broken || seg.size >= this.segmentBytes) seg = await this.#startSegment();
    } catch (err) {
      this.#undo.unshift(...undo);
      throw err;
    }
    await this.#writeTo(seg, entries, undo);
  }

  async #writeTo(seg: Segment, entries: Entry[], undo: string[]): Promise<void> {
    const buffers = entries.flatMap((e) => encode(seg.generation, e));
    const total = buffers.reduce((n, b) => n + b.length, 0);
    this.#batchBytes += (total - this.#batchBytes) / 8;
    if (seg.size + total > seg.prepared && this.#batchBytes < ZERO_BELOW) await this.#prepare(seg, seg.size + total);
    try {
      let written = 0;
      while (written < total) {
        const rest = written === 0 ? buffers : [Buffer.concat(buffers).subarray(written)];
        const { bytesWritten } = await seg.fh.writev(rest, seg.size + written);
        written += bytesWritten;
      }
      await this.fsyncs.time(() => seg.fh.datasync());
    } catch (err) {
      // Its waiters get an error (a 4xx), so none of its records may be read back: cut off and
      // synced, or else its messages journaled `dropped` with the next batch. Nothing more goes
      // after it either way: the next batch starts a new segment.
      seg.broken = true;
      const cut = await seg.fh.truncate(seg.size).then(() => seg.fh.datasync()).then(() => true, () => false);
      this.#undo.push(...undo);
      if (!cut) this.#undo.push(...entries.filter((e) => e.kind === 'message').map((e) => e.id));
      throw err;
    }
    seg.size += total;
    for (const e of entries) {
      if (e.kind === 'message') {
        seg.live.add(e.id);
        this.#where.set(e.id, seg);
      } else if (e.kind === 'dropped') {
        this.#where.get(e.id)?.live.delete(e.id);
        this.#where.delete(e.id);
      }
    }
  }

  /**
   * Zeroes a growing segment ahead of its records (to `need` at least, one more step at most:
   * doubling up to PREPARE_BYTES), then syncs it once. A record written over blocks the file already
   * has is made durable by its fdatasync alone; one that grows the file also commits the file
   * system's journal (the new size and blocks), batch after batch: worth it for small batches only
   * (ZERO_BELOW). Best effort: with little free space (PREPARE_SHARE), or when it fails, the
   * segment simply grows.
   */
  async #prepare(seg: Segment, need: number): Promise<void> {
    const step = Math.min(PREPARE_BYTES, Math.max(64 * 1024, seg.prepared));
    const target = Math.min(Math.max(this.segmentBytes, need), Math.ceil((need + step) / step) * step);
    const want = Math.max(0, Math.ceil(target - seg.prepared));
    try {
      const fs = await statfs(this.dir);
      if (want === 0 || want > fs.bavail * fs.bsize * PREPARE_SHARE) return;
      for (let at = seg.prepared; at < seg.prepared + want; at += ZEROES.length) {
        const n = Math.min(ZEROES.length, seg.prepared + want - at);
        await seg.fh.write(ZEROES, 0, n, at);
      }
      await this.fsyncs.time(() => seg.fh.datasync());
      seg.prepared += want;
    } catch {
      seg.prepared = await seg.fh.stat().then((st) => st.size, () => seg.prepared);
    }
  }

  async #startSegment(): Promise<Segment> {
    const generation = ++this.#generation;
    const path = join(this.dir, segmentName(generation));
    const spare = this.#spares.shift();
    let fh: FileHandle;
    if (spare) {
      await rename(spare, path);
      fh = await open(path, 'r+');
    } else {
      fh = await open(path, 'wx', 0o600);
    }
    // The name must be durable before records of this generation are: a reader checks the generation against it.
    await this.#syncDir();
    const seg: Segment = { generation, path, fh, size: 0, prepared: spare ? (await fh.stat()).size : 0, live: new Set(), broken: false };
    this.#segments.push(seg);
    return seg;
  }

  /** Retires segments from the oldest while they are done with (or too many are open and the oldest can be settled). */
  async #retire(): Promise<void> {
    while (this.#segments.length > 1) {
      const oldest = this.#segments[0];
      if (oldest.live.size > 0 && (this.#segments.length <= this.limits.maxSegments || [...oldest.live].some((id) => this.#unstored.has(id)))) return;
      // Its messages still queued settled in place, and the database synced (its outcomes are then on the device).
      const ids = [...oldest.live];
      await this.settle(ids);
      this.settled += ids.length;
      for (const id of ids) this.#where.delete(id);
      oldest.live.clear();
      this.#segments.shift();
      await oldest.fh.close().catch(() => undefined);
      await this.#recycle(oldest.path);
      // Gone for good before anything relies on it being gone.
      await this.#syncDir();
    }
  }

  async #recycle(path: string): Promise<void> {
    this.retired++;
    if (this.#spares.length >= this.limits.spares) {
      await rm(path, { force: true });
      return;
    }
    const spare = join(this.dir, `spare-${basename(path)}`);
    await rename(path, spare);
    this.#spares.push(spare);
  }

  async #syncDir(): Promise<void> {
    if (!this.#dirHandle) {
      // Writing and retiring may both get here first: one handle is kept.
      const fh = await open(this.dir, 'r');
      if (this.#dirHandle) await fh.close();
      else this.#dirHandle = fh;
    }
    await this.#dirHandle.sync();
  }

  /**
   * A clean stop: the messages still held are settled in place and every segment recycled, so the
   * next start finds the spool and the database as the only copies (reconciliation judges them
   * alone). Nothing may be appended meanwhile (the listeners are closed). A failure leaves the
   * segments for the next start's replay.
   */
  async retireAll(): Promise<void> {
    await this.#idle();
    await this.settle([...this.#where.keys()].filter((id) => !this.#unstored.has(id)));
    if (this.#unstored.size > 0) return;
    this.#where.clear();
    for (const seg of this.#segments.splice(0)) {
      await seg.fh.close().catch(() => undefined);
      await this.#recycle(seg.path);
    }
    await this.#syncDir();
  }

  /** Waits for the batch being written, then closes the segments (their records stay for the next start). */
  async close(): Promise<void> {
    await this.#idle();
    if (this.#lazyTimer) clearTimeout(this.#lazyTimer);
    this.#lazyTimer = null;
    for (const seg of this.#segments.splice(0)) await seg.fh.close().catch(() => undefined);
    await this.#dirHandle?.close().catch(() => undefined);
    this.#dirHandle = null;
  }
}
