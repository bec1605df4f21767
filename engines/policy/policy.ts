/*
 * policy — the built-in attachment policy: dangerous file types are refused (or quarantined, or
 * tagged) whatever the AV engines say.
 *
 * Takes: the spool file, streamed through mailparser's MailParser. Attachment content is streamed
 *   too and only samples are kept: the first 64 KiB (magic numbers, RAR headers, a zip's first
 *   local headers) and the last 1 MiB (a zip's central directory, a 7z header), so one attachment
 *   costs at most about 1.1 MiB whatever its size; attachments are read one after another, and an
 *   attached message (message/rfc822) is parsed the same way, up to 5 levels deep. MailParser
 *   itself keeps the text parts of the message, which the size limit bounds.
 * Gives: the first rule broken, as a violation naming the file:
 *   `attachment "invoice.pdf.exe": double extension`, `attachment "setup.exe": blocked extension
 *   .exe`, `attachment "notes.txt": executable content (PE)`, `attachment "files.zip": contains
 *   "run.exe" (blocked extension .exe)`, `attachment "secret.zip": encrypted archive`; else clean.
 *   An archive whose listing could not be read whole is named in `detail.uninspected`. A message
 *   MailParser cannot parse is an error `protocol` (the other engines still judge it).
 *   Archives are listed, never extracted (policy-archive.ts: zip, RAR, and 7z encryption only);
 *   archives inside archives are judged by name only. Text parts shown inline (text/plain or
 *   text/html without an attachment disposition) are message text to MailParser and are not
 *   judged by name.
 * Network: none.
 * Settings: engines[].action (reject), blockedExtensions (replaces the default list of
 *   policy-rules.ts), allowEncryptedArchives (false), checkArchives (true), timeout (10s),
 *   maxSize (25MB).
 */
import type { Readable } from 'node:stream';
import { MailParser, type AttachmentStream } from 'mailparser';
import { z } from 'zod';
import { engineCommon } from '../engines-common.js';
import { errorResult, type Engine, type EngineDeps } from '../engine.js';
import { listArchive, type Sample } from './policy-archive.js';
import { DEFAULT_BLOCKED_EXTENSIONS, executableKind, nameRule } from './policy-rules.js';

const extension = z.string().regex(/^\.?[a-z0-9_$~-]+$/i, 'an extension such as "exe" or ".exe"')
  .transform((e) => e.replace(/^\./, '').toLowerCase());

export const policyOptions = z.strictObject({
  ...engineCommon({ timeout: '10s', maxSize: '25MB' }),
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
const MAX_DEPTH = 5;

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

export function createPolicy(options: PolicyOptions, _deps: EngineDeps): Engine {
  const blocked: ReadonlySet<string> = new Set(options.blockedExtensions);

  function label(a: AttachmentStream): string {
    return a.filename ? `attachment "${a.filename}"` : `attachment (unnamed ${a.contentType})`;
  }

  /** The rule an attachment's content breaks, judged once it has been read. */
  function contentRule(a: AttachmentStream, sample: Sample, uninspected: string[]): string | null {
    const kind = executableKind(sample.head);
    if (kind) return `${label(a)}: executable content (${kind})`;
    if (!options.checkArchives && options.allowEncryptedArchives) return null;
    const listing = listArchive(sample);
    if (!listing) return null;
    if (listing.encrypted && !options.allowEncryptedArchives) return `${label(a)}: encrypted archive`;
    if (options.checkArchives) {
      for (const name of listing.names) {
        const rule = nameRule(name, blocked);
        if (rule) return `${label(a)}: contains "${name}" (${rule})`;
      }
      if (!listing.complete) uninspected.push(a.filename ?? a.contentType);
    }
    return null;
  }

  /**
   * Parses one message (the spool file, or an attached message) and resolves with the first rule
   * broken, or null. `stop` ends every level at once.
   */
  function inspect(source: Readable, depth: number, stop: AbortSignal, uninspected: string[]): Promise<string | null> {
    return new Promise((resolve, reject) => {
      const parser = new MailParser({ checksumAlgo: false, skipHtmlToText: true, skipTextToHtml: true, skipTextLinks: true, skipImageLinks: true });
      let settled = false;
      const finish = (rule: string | null, err?: Error) => {
        if (settled) return;
        settled = true;
        stop.removeEventListener('abort', onStop);
        if (rule !== null || err) { source.unpipe(parser); parser.destroy(); }
        if (err) reject(err); else resolve(rule);
      };
      const onStop = () => { parser.destroy(); finish(null); };
      if (stop.aborted) return finish(null);
      stop.addEventListener('abort', onStop, { once: true });

      parser.on('data', (part: AttachmentStream | { type: 'text' }) => {
        if (part.type !== 'attachment' || settled) return;
        const named = part.filename ? nameRule(part.filename, blocked) : null;
        if (named) return finish(`${label(part)}: ${named}`);
        if (part.contentType === 'message/rfc822' && depth < MAX_DEPTH) {
          inspect(part.content, depth + 1, stop, uninspected).then(
            (rule) => rule ? finish(rule) : part.release?.(),
            (err: Error) => finish(null, err),
          );
          return;
        }
        const sampler = new Sampler();
        part.content.on('error', (err: Error) => finish(null, new ParseError(err.message, { cause: err })));
        part.content.on('data', (chunk: Buffer) => sampler.push(chunk));
        part.content.on('end', () => {
          const rule = contentRule(part, sampler.sample(), uninspected);
          if (rule) finish(rule); else part.release?.();
        });
      });
      parser.on('error', (err: Error) => finish(null, new ParseError(err.message, { cause: err })));
      parser.on('end', () => finish(null));
      // Below the top level the source is an attachment's decoder, whose failures are the MIME's.
      source.on('error', (err: Error) => finish(null, depth === 0 ? err : new ParseError(err.message, { cause: err })));
      source.pipe(parser);
    });
  }

  return {
    name: options.name,
    kind: 'policy',
    version: () => null,
    async scan(message, _context, signal) {
      if (signal.aborted) return errorResult('timeout', 'deadline reached');
      const done = new AbortController();
      const stop = AbortSignal.any([signal, done.signal]);
      const input = message.open();
      const uninspected: string[] = [];
      try {
        const rule = await inspect(input, 0, stop, uninspected);
        if (signal.aborted) return errorResult('timeout', 'deadline reached');
        const detail = uninspected.length ? { uninspected } : undefined;
        if (rule) return { outcome: { status: 'violation', rule, action: options.action }, detail };
        return { outcome: { status: 'clean' }, detail };
      } catch (err) {
        if (signal.aborted) return errorResult('timeout', 'deadline reached');
        if (err instanceof ParseError) return errorResult('protocol', `unparseable MIME: ${err.message}`);
        return errorResult('io', `reading the spool file: ${(err as Error).message}`);
      } finally {
        done.abort();
        input.destroy();
      }
    },
    async close() {},
  };
}

export const policyDefinition = { type: 'policy', kind: 'policy', schema: policyOptions, create: createPolicy } as const;
