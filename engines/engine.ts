/*
 * The engine contract: what every adapter (clamd, spamd, rspamd, ICAP, sender authentication,
 * built-in policy) implements and what it returns.
 *
 * An adapter never throws from `scan()`: every outcome, a failure included, is a value. It reads
 * the message from the spool file DATA just wrote (`message.open()` streams it from the page
 * cache; nothing is copied to disk again) and stops promptly when `signal` aborts — the runner
 * (`engines-run.ts`) aborts it at the engine's own deadline and records a timeout.
 */
import { createReadStream } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import { Readable } from 'node:stream';

export type EngineKind = 'av' | 'spam' | 'auth' | 'policy';

/** What went wrong when an engine could not give an opinion. */
export type EngineErrorKind = 'timeout' | 'refused' | 'protocol' | 'too-large' | 'io';

/** The message as the engines see it: the spool file, its size, and a way to stream it. */
export interface ScanMessage {
  /** The spool file: the message exactly as received (CRLF line endings, no added headers). */
  readonly path: string;
  readonly size: number;
  /** A fresh stream of the whole message; `start`/`end` are inclusive byte offsets as in fs. */
  open(range?: { start?: number; end?: number }): Readable;
}

const CHUNK = 64 * 1024;

/**
 * Reads through a shared handle with positional reads and never closes it: every engine gets its
 * own stream, and one engine finishing (or being aborted) must not close the others' file. The
 * caller closes the handle once all of them are done.
 */
function handleStream(handle: FileHandle, size: number, range?: { start?: number; end?: number }): Readable {
  let position = range?.start ?? 0;
  const last = Math.min(range?.end ?? size - 1, size - 1);
  return new Readable({
    highWaterMark: CHUNK,
    read() {
      if (position > last) return void this.push(null);
      const length = Math.min(CHUNK, last - position + 1);
      const buf = Buffer.allocUnsafe(length);
      handle.read(buf, 0, length, position).then(({ bytesRead }) => {
        if (bytesRead === 0) return void this.push(null);
        position += bytesRead;
        this.push(bytesRead === length ? buf : buf.subarray(0, bytesRead));
      }, (err: Error) => this.destroy(err));
    },
  });
}

/**
 * The spool file as a `ScanMessage`. When the bytes are still in memory (`held`: small messages
 * the DATA path kept), streams read them from there instead: the same bytes, no file I/O.
 */
export function spoolMessage(path: string, size: number, held?: Buffer[] | null, handle?: FileHandle): ScanMessage {
  let whole: Buffer | null = null;
  return {
    path,
    size,
    open: (range) => {
      if (!held) {
        // Through a handle opened beforehand when there is one: reads still work once the file is removed.
        const stream = handle ? handleStream(handle, size, range) : createReadStream(path, { start: range?.start, end: range?.end, highWaterMark: CHUNK });
        // Registered first, so every consumer sees it: a spool read error is never "nothing listening" (ENOENT).
        stream.on('error', (err: NodeJS.ErrnoException) => {
          err.message = `cannot read the message: ${err.message}`;
          err.code = 'ESPOOL';
        });
        return stream;
      }
      whole ??= held.length === 1 ? held[0] : Buffer.concat(held);
      const start = range?.start ?? 0;
      const end = range?.end === undefined ? whole.length : range.end + 1;
      return Readable.from([whole.subarray(start, end)], { objectMode: false });
    },
  };
}

/** The SMTP transaction the message arrived in. */
export interface ScanContext {
  queueId: string;
  /** Client IP address. */
  client: string;
  /** Client host name from a PTR lookup, when one was made and succeeded. */
  clientName?: string | null;
  helo: string;
  /** Envelope sender ('' for the null sender). */
  sender: string;
  recipients: string[];
  authUser: string | null;
  /** The tenants the recipients belong to. */
  tenants?: string[];
}

/** A spam engine's scoring, in its own units. */
export interface SpamScore {
  score: number;
  /** The engine's own "this is spam" score (spamd's required score, rspamd's reject score). */
  threshold: number;
  symbols: string[];
  /** rspamd's action, when the engine states one. */
  action?: 'no action' | 'greylist' | 'add header' | 'rewrite subject' | 'soft reject' | 'reject';
}

export type EngineOutcome =
  /** Nothing found. A spam engine also reports its score. */
  | { status: 'clean'; score?: SpamScore }
  /** An AV engine found malware. */
  | { status: 'infected'; signature: string }
  /** A spam engine judged the message spam (score ≥ its threshold, or its action says so). */
  | { status: 'spam'; score: SpamScore }
  /**
   * A policy or authentication engine found the message breaks a rule: a dangerous attachment,
   * a DMARC failure under a reject policy. `action` is what the engine's config asks for.
   */
  | { status: 'violation'; rule: string; action: 'reject' | 'quarantine' | 'tag' }
  /**
   * The engine works but cannot judge this message, because of the message: MIME it cannot
   * parse, a limit of its own exceeded (clamd's Heuristics.Limits.Exceeded.*: recursion, files,
   * scan size); also set by the runner for a local engine past its deadline and for a message
   * above an engine's maxSize under `oversize: unscannable` (engines-run.ts). Not a failure of the engine (its circuit breaker does not count it) and never a
   * clean result: the verdict treats it as `scanning.unscannable` says.
   */
  | { status: 'unscannable'; reason: string }
  /** No opinion: the engine failed (down, timed out, answered garbage). Counted by its breaker. */
  | { status: 'error'; error: EngineErrorKind; message: string };

export interface EngineResult {
  outcome: EngineOutcome;
  /** Header lines the engine contributes (e.g. Authentication-Results), without CRLF. */
  headers?: string[];
  /** Anything else worth recording (symbols, the server that answered, DMARC policy …). */
  detail?: Record<string, unknown>;
}

export interface Engine {
  readonly name: string;
  readonly kind: EngineKind;
  /**
   * The engine's version as last seen (clamd `VERSION`, ICAP `ISTag`, spamd/rspamd server
   * version); null until known.
   */
  version(): string | null;
  scan(message: ScanMessage, context: ScanContext, signal: AbortSignal): Promise<EngineResult>;
  /** A cheap liveness check (clamd PING, spamd PING, ICAP OPTIONS), never throws. */
  ping?(signal: AbortSignal): Promise<boolean>;
  close(): Promise<void>;
}

export function errorResult(error: EngineErrorKind, message: string, detail?: Record<string, unknown>): EngineResult {
  return { outcome: { status: 'error', error, message }, detail };
}

/**
 * ClamAV names what it could not scan whole `Heuristics.Limits.Exceeded.<limit>` (with
 * AlertExceedsMax: MaxRecursion, MaxFiles, MaxScanSize, MaxFileSize, MaxScanTime …), through clamd
 * and through ICAP servers backed by it. That is no virus and no clean result: the content was
 * not fully scanned.
 */
const LIMITS_EXCEEDED = /^Heuristics\.Limits\.Exceeded\b/i;

/** An AV engine's finding: infected, or unscannable when the name only says a limit was reached. */
export function avFinding(signature: string, detail?: Record<string, unknown>): EngineResult {
  if (LIMITS_EXCEEDED.test(signature)) return unscannableResult(`limit of the scanner exceeded (${signature})`, detail);
  return { outcome: { status: 'infected', signature }, detail };
}

export function unscannableResult(reason: string, detail?: Record<string, unknown>): EngineResult {
  return { outcome: { status: 'unscannable', reason }, detail };
}

/**
 * Maps a socket-level failure to an error kind: ECONNREFUSED/ENOENT (nothing listening) →
 * refused, an abort → timeout, anything else → io.
 */
export function socketErrorResult(err: unknown, signal: AbortSignal): EngineResult {
  if (signal.aborted) return errorResult('timeout', 'deadline reached');
  const e = err as NodeJS.ErrnoException;
  if (e?.code === 'ECONNREFUSED' || e?.code === 'ENOENT') return errorResult('refused', `${e.code}: ${e.message}`);
  if (e?.code === 'ESPOOL') return errorResult('io', e.message);
  return errorResult('io', e?.message ?? String(err));
}

/** What an adapter may use from the process when it is built. */
export interface EngineDeps {
  /** This MTA's host name (the authserv-id of Authentication-Results, the ICAP request host). */
  hostname: string;
  /** DNS through the configured resolvers only (`dns.servers`); null when none are configured. */
  resolver: import('node:dns').promises.Resolver | null;
  log: import('pino').Logger;
}
