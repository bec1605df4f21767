/*
 * policy — the built-in attachment policy: dangerous file types are refused (or quarantined, or
 * tagged) whatever the AV engines say.
 *
 * Takes: the spool file, split into its MIME parts by mailsplit's Splitter as it streams by.
 *   Every part that carries a name (Content-Disposition filename or Content-Type name, both
 *   when they differ, RFC 2047 and RFC 2231 decoded), whatever its type and disposition, is
 *   judged by that name: mail clients list an inline text/plain part named "invoice.js" as an
 *   attachment. The content of every part that is not message text (text/plain or text/html,
 *   unnamed, inline) is decoded as it streams and only samples are kept: the first 64 KiB
 *   (magic numbers, RAR headers, a zip's first local headers) and the last 1 MiB (a zip's
 *   central directory, a 7z header), so one part costs at most about 1.1 MiB whatever its size.
 *   Message text is not decoded nor kept. Parts are read one after another, and an attached
 *   message (message/rfc822) is split the same way, up to 20 levels deep (above the default of
 *   limits.maxMimeDepth, so Ichidan's own structure check refuses deeper mail first).
 * Gives: the first rule broken, as a violation naming the file (control characters shown as
 *   '?', at most 100 characters, see policy-rules.ts):
 *   `attachment "invoice.pdf.exe": double extension`, `attachment "setup.exe": blocked extension
 *   .exe`, `attachment "notes.txt": executable content (PE)`, `attachment "files.zip": contains
 *   "run.exe" (blocked extension .exe)`, `attachment "secret.zip": encrypted archive`; else clean.
 *   An archive whose listing could not be read whole is named in `detail.uninspected`. A message
 *   it cannot judge whole — one the Splitter cannot split (a header block past 1 MiB, more than
 *   1000 parts), attached messages nested deeper than it reads — is `unscannable`: the
 *   message's fault, not the engine's (its breaker does not count it), and never clean.
 *   Archives are listed, never extracted (policy-archive.ts: zip, RAR, and 7z encryption only);
 *   archives inside archives are judged by name only.
 * Network: none. The engine is `local` (engines-registry.ts): it works on the message alone, so
 *   a scan that runs past `timeout` was slowed by the message (many parts, huge encoded bodies,
 *   long archive listings), and the runner judges the message unscannable, never clean, without
 *   counting it against the breaker.
 * Settings: engines[].action (reject), blockedExtensions (replaces the default list of
 *   policy-rules.ts), allowEncryptedArchives (false), checkArchives (true), timeout (10s),
 *   maxSize (25MB).
 */
import { once, setMaxListeners } from 'node:events';
import { addAbortSignal, type Readable, type Transform } from 'node:stream';
import { MimeNode, Splitter, type SplitterChunk } from '@zone-eu/mailsplit';
import { z } from 'zod';
import { engineCommon } from '../engines-common.js';
import { errorResult, unscannableResult, type Engine, type EngineDeps } from '../engine.js';
import { listArchive, type Sample } from './policy-archive.js';
import { DEFAULT_BLOCKED_EXTENSIONS, displayName, executableKind, nameRule } from './policy-rules.js';

const extension = z.string().regex(/^\.?[a-z0-9_$~-]+$/i, 'an extension such as "exe" or ".exe"')
  .transform((e) => e.replace(/^\./, '').toLowerCase());

export const policyOptions = z.strictObject({
  ...engineCommon({ timeout: '10s', maxSize: '25MB', oversize: 'unscannable' }),
  type: z.literal('policy'),
  /** What a dangerous attachment does to the message. */
  action: z.enum(['reject', 'quarantine', 'tag']).default('reject'),
  /** File extensions refused, with or without the dot; the list replaces the default one. */
  blockedExtensions: z.array(extension).default(DEFAULT_BLOCKED_EXTENSIONS),
  /** Let through archives that are encrypted (their content cannot be scanned by anyone). */
  allowEncryptedArchives: z.boolean().default(false),
  /** Judge the names of the files inside zip and RAR archives. */
  checkArchives: z.boolean().default(true),
});
export type PolicyOptions = z.output<typeof policyOptions>;

const HEAD_BYTES = 64 * 1024;
const TAIL_BYTES = 1024 * 1024;
const MAX_DEPTH = 20;

/** Keeps the first HEAD_BYTES and the last TAIL_BYTES of a stream. */
class Sampler {
  #head: Buffer[] = [];
  #headLength = 0;
  #tail: Buffer[] = [];
  #tailLength = 0;
  size = 0;

  push(chunk: Buffer): void {
    this.size += chunk.length;
    if (this.#headLength < HEAD_BYTES) {
      const part = chunk.subarray(0, HEAD_BYTES - this.#headLength);
      this.#head.push(part);
      this.#headLength += part.length;
    }
    this.#tail.push(chunk);
    this.#tailLength += chunk.length;
    while (this.#tailLength - this.#tail[0].length >= TAIL_BYTES) this.#tailLength -= this.#tail.shift()!.length;
  }

  sample(): Sample {
    const tail = Buffer.concat(this.#tail);
    return { head: Buffer.concat(this.#head), tail: tail.subarray(Math.max(0, tail.length - TAIL_BYTES)), size: this.size };
  }
}

class ParseError extends Error {}

type PartNode = Extract<SplitterChunk, { type: 'node' }>;

/** What every level of one message reports to; `stop` ends them all. */
interface Scan {
  stop: AbortSignal;
  found(rule: string): void;
  /** The message cannot be judged whole (nested past MAX_DEPTH). */
  unjudged(reason: string): void;
  uninspected: string[];
}

/** A part whose content is being judged: its body goes in, decoded, as it streams by. */
interface Leaf {
  write(body: Buffer): Promise<void>;
  /** Ends the body and waits for the judgement. */
  close(): Promise<void>;
}

const MESSAGE_TEXT_TYPES = new Set(['text/plain', 'text/html']);

/** Parts a mail client shows as the message itself, the ones MailParser reads as text. */
function isMessageText(node: PartNode): boolean {
  return !node.filename && MESSAGE_TEXT_TYPES.has(node.contentType || 'text/plain') && (!node.disposition || node.disposition === 'inline');
}

/**
 * The names a part carries. mailsplit gives the Content-Disposition filename before the
 * Content-Type name, but clients differ on which one they show and save under, so a part that
 * has both is judged by both. The Content-Type line alone is put through a MimeNode of its own
 * to decode its name exactly as the part's filename was.
 */
function partNames(node: PartNode): string[] {
  if (!node.filename) return [];
  const names = new Set([node.filename]);
  const line = node.headers ? node.headers.getList().find((l) => l.key === 'content-type') : undefined;
  if (line) {
    const probe = new MimeNode(false);
    probe.addHeaderChunk(Buffer.from(`${line.line}\r\n`, 'binary'));
    probe.addHeaderChunk(Buffer.from('\r\n'));
    probe.parseHeaders();
    if (probe.filename) names.add(probe.filename);
  }
  return [...names];
}

export function createPolicy(options: PolicyOptions, _deps: EngineDeps): Engine {
  const blocked: ReadonlySet<string> = new Set(options.blockedExtensions);

  function label(node: PartNode, name = node.filename): string {
    return name ? `attachment "${displayName(name)}"` : `attachment (unnamed ${displayName(node.contentType || 'text/plain')})`;
  }

  /** The rule a part's content breaks, judged once it has been read. */
  function contentRule(node: PartNode, sample: Sample, uninspected: string[]): string | null {
    const kind = executableKind(sample.head);
    if (kind) return `${label(node)}: executable content (${kind})`;
    if (!options.checkArchives && options.allowEncryptedArchives) return null;
    const listing = listArchive(sample);
    if (!listing) return null;
    if (listing.encrypted && !options.allowEncryptedArchives) return `${label(node)}: encrypted archive`;
    if (options.checkArchives) {
      for (const name of listing.names) {
        const rule = nameRule(name, blocked);
        if (rule) return `${label(node)}: contains "${displayName(name)}" (${rule})`;
      }
      if (!listing.complete) uninspected.push(displayName(node.filename || node.contentType || 'text/plain'));
    }
    return null;
  }

  /** Starts judging a part's content: an attached message is split in turn, anything else sampled. */
  function openLeaf(node: PartNode, depth: number, scan: Scan): Leaf {
    const decoder: Transform = addAbortSignal(scan.stop, node.getDecoder());
    let verdict: Promise<void>;
    if (node.contentType === 'message/rfc822') {
      if (depth >= MAX_DEPTH) scan.unjudged(`attached messages nested deeper than ${MAX_DEPTH} levels`);
      verdict = depth >= MAX_DEPTH ? Promise.resolve() : inspect(decoder, depth + 1, scan);
    } else {
      const sampler = new Sampler();
      verdict = new Promise((resolve, reject) => {
        decoder.on('data', (chunk: Buffer) => sampler.push(chunk));
        decoder.on('error', (err: Error) => reject(new ParseError(err.message, { cause: err })));
        decoder.on('end', () => {
          const rule = contentRule(node, sampler.sample(), scan.uninspected);
          if (rule) scan.found(rule);
          resolve();
        });
      });
    }
    // Awaited at close, or not at all when the scan stops first: that rejection is no news.
    verdict.catch(() => {});
    return {
      async write(body) {
        // An attached message's own failure ends the wait for room as well.
        if (!decoder.write(body)) await Promise.race([once(decoder, 'drain'), verdict]);
      },
      async close() {
        decoder.end();
        await verdict;
      },
    };
  }

  /**
   * Splits one message (the spool file, or an attached message) and judges its parts one after
   * another, reporting the first rule broken to `scan`. Returns once the message has been read
   * or the scan stopped; throws ParseError for MIME the Splitter gives up on, and the source's
   * own error for a spool file that cannot be read.
   */
  async function inspect(source: Readable, depth: number, scan: Scan): Promise<void> {
    const splitter = addAbortSignal(scan.stop, new Splitter({ ignoreEmbedded: true }));
    let sourceError: Error | null = null;
    source.on('error', (err: Error) => { sourceError = err; splitter.destroy(err); });
    source.pipe(splitter);
    let leaf: Leaf | null = null;
    try {
      for await (const chunk of splitter as AsyncIterable<SplitterChunk>) {
        if (chunk.type === 'node') {
          await leaf?.close();
          leaf = null;
          for (const name of partNames(chunk)) {
            const rule = nameRule(name, blocked);
            if (rule) return scan.found(`${label(chunk, name)}: ${rule}`);
          }
          if (!chunk.multipart && !isMessageText(chunk)) leaf = openLeaf(chunk, depth, scan);
        } else if (chunk.type === 'body' && leaf) {
          await leaf.write(chunk.value);
        }
      }
      await leaf?.close();
    } catch (err) {
      if (scan.stop.aborted) return;
      // Below the top level the source is a part's decoder, whose failures are the MIME's.
      if (sourceError && depth === 0) throw sourceError;
      throw err instanceof ParseError ? err : new ParseError((err as Error).message, { cause: err });
    } finally {
      source.unpipe(splitter);
      splitter.destroy();
    }
  }

  return {
    name: options.name,
    kind: 'policy',
    version: () => null,
    async scan(message, _context, signal) {
      if (signal.aborted) return errorResult('timeout', 'deadline reached');
      const done = new AbortController();
      let rule: string | null = null;
      let unjudged: string | null = null;
      const stop = AbortSignal.any([signal, done.signal]);
      // Every level of attached messages listens on it (its splitter and its part's decoder).
      setMaxListeners(4 * MAX_DEPTH + 10, stop);
      const scan: Scan = {
        stop,
        found: (r) => { rule ??= r; done.abort(); },
        unjudged: (r) => { unjudged ??= r; done.abort(); },
        uninspected: [],
      };
      const input = message.open();
      try {
        await inspect(input, 0, scan);
        const detail = scan.uninspected.length ? { uninspected: scan.uninspected } : undefined;
        if (rule !== null) return { outcome: { status: 'violation', rule, action: options.action }, detail };
        if (unjudged !== null) return unscannableResult(unjudged, detail);
        if (signal.aborted) return errorResult('timeout', 'deadline reached');
        return { outcome: { status: 'clean' }, detail };
      } catch (err) {
        if (signal.aborted) return errorResult('timeout', 'deadline reached');
        // The message's fault: a sender must not be able to open this engine's breaker with it.
        if (err instanceof ParseError) return unscannableResult(`unparseable MIME: ${err.message}`);
        return errorResult('io', `reading the spool file: ${(err as Error).message}`);
      } finally {
        done.abort();
        input.destroy();
      }
    },
    async close() {},
  };
}

export const policyDefinition = { type: 'policy', kind: 'policy', local: true, schema: policyOptions, create: createPolicy } as const;
