/*
 * Receiving DATA: the bytes go straight to the spool file as they arrive.
 *
 * Memory stays bounded whatever the message size (the writer applies backpressure and bytes past
 * the size limit are counted, not kept). The end of data is CRLF.CRLF only (smtp-server finds it);
 * a bare LF or bare CR anywhere in the data refuses the whole message, so `\n.\n`-style endings
 * can never be read as the end of one message and the start of another (SMTP smuggling,
 * CVE-2023-51764). Write errors (disk full) are remembered and the stream is still read to its
 * end, so the session stays in step with the client. The same bytes go through the structure
 * check (accept-structure.ts: header block, header fields, MIME depth and parts against `limits`)
 * as they arrive, so it costs no second read. NUL bytes are noted (`nul`): the caller refuses
 * them unless limits.allowNul says otherwise. `tap` sees the same chunks the spool file gets (DKIM
 * signing's body hash, accept-dkim.ts), so nothing reads the message twice.
 */
import type { Readable } from 'node:stream';
import type { SpoolWriter } from '../queue-spool.js';
import { StructureCheck, type StructureLimits } from './accept-structure.js';

const CR = 0x0d;
const LF = 0x0a;

/** Finds bare CR and bare LF across chunk boundaries. */
export class LineEndingGuard {
  #pendingCR = false;
  bare = false;

  feed(chunk: Buffer): void {
    if (this.bare || chunk.length === 0) return;
    if (this.#pendingCR) {
      if (chunk[0] !== LF) { this.bare = true; return; }
    }
    let i = chunk.indexOf(LF);
    while (i !== -1) {
      const prev = i > 0 ? chunk[i - 1] : (this.#pendingCR ? CR : -1);
      if (prev !== CR) { this.bare = true; return; }
      i = chunk.indexOf(LF, i + 1);
    }
    let j = chunk.indexOf(CR);
    while (j !== -1) {
      if (j === chunk.length - 1) break;
      if (chunk[j + 1] !== LF) { this.bare = true; return; }
      j = chunk.indexOf(CR, j + 1);
    }
    this.#pendingCR = chunk[chunk.length - 1] === CR;
  }

  /** At the end of data a CR cannot be left waiting for its LF. */
  finish(): void {
    if (this.#pendingCR) this.bare = true;
  }
}

export interface ReceiveResult {
  bytes: number;
  bareLineEnding: boolean;
  oversized: boolean;
  nul: boolean;
  writeError: NodeJS.ErrnoException | null;
  /** The first structure limit the message passes (null: within them, or refused for another reason). */
  structure: string | null;
  /** The message's Message-ID header field (for the log), when it has one. */
  messageId: string | null;
}

export async function receiveInto(stream: Readable, writer: SpoolWriter, limits: StructureLimits & { maxMessageSize: number }, tap?: (chunk: Buffer) => void): Promise<ReceiveResult> {
  const maxSize = limits.maxMessageSize;
  const guard = new LineEndingGuard();
  const check = new StructureCheck(limits);
  let bytes = 0;
  let nul = false;
  let writeError: NodeJS.ErrnoException | null = null;
  writer.on('error', (err) => { writeError ??= err; });
  try {
    await receiveChunks();
  } catch (err) {
    check.abandon();
    throw err;
  }
  guard.finish();
  const refused = writeError !== null || guard.bare || bytes > maxSize;
  if (refused) check.abandon();
  const structure = refused ? null : await check.finish();
  return { bytes, bareLineEnding: guard.bare, oversized: bytes > maxSize, nul, writeError, structure, messageId: check.messageId };

  async function receiveChunks(): Promise<void> {
    for await (const chunk of stream as AsyncIterable<Buffer>) {
      bytes += chunk.length;
      guard.feed(chunk);
      nul ||= chunk.includes(0);
      if (writeError || guard.bare || bytes > maxSize) continue;
      const checked = check.write(chunk);
      tap?.(chunk);
      if (!writer.write(chunk)) {
        await new Promise<void>((resolve) => {
          const done = () => { writer.off('drain', done); writer.off('error', done); writer.off('close', done); resolve(); };
          writer.on('drain', done);
          writer.on('error', done);
          writer.on('close', done);
        });
      }
      await checked;
    }
  }
}
