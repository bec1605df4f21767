/*
 * The structure check of DATA: a message whose structure is past Ichidan's own limits is a verdict
 * about the message, made whatever engines run (none included), never an engine's error.
 *
 * Why: a scanner that meets more structure than it handles gives up — mailsplit (the policy
 * engine) errors out on a header block past 1 MiB or more than 1000 parts, clamd stops descending
 * at MaxRecursion (17) and by default says nothing. Padding a message past those points would
 * otherwise carry a blocked attachment or a virus through as "clean". Ichidan's limits sit below
 * the engines' own, so the message is judged here before any engine can give up on it.
 *
 * Takes: the DATA bytes as they arrive (receiveInto, accept-receive.ts), fed to a mailsplit Splitter
 *   that reads headers and boundaries only; bodies stream through and are dropped. Attached
 *   messages (message/rfc822) are split too, decoded first when mailsplit leaves them as a body
 *   (an attachment, or base64), since scanners and mail clients open those as well. Memory: one
 *   header block per level at most (maxHeaderSize).
 * Gives: null, or the first limit passed in words ("MIME nesting deeper than 16 levels"), which
 *   the verdict turns into `scanning.unscannable` (default: 550 5.6.0). Also `messageId`: the
 *   top header block's Message-ID field (for the log; at most 200 characters), null when absent.
 * Counts: the header block of the message and of every part (bytes as mailsplit counts them,
 *   each line at least 64; fields), the depth of every part (its ancestors, an attached message's
 *   own top included), and the parts of the whole message (every node, containers included).
 * RFCs: 5322 (header fields), 2045/2046 (MIME multipart, message/rfc822).
 * Settings: limits.maxHeaderSize (256KB), limits.maxHeaderFields (1000), limits.maxMimeDepth (16),
 *   limits.maxMimeParts (500).
 */
import { once } from 'node:events';
import { finished, type Transform } from 'node:stream';
import { Splitter, type SplitterChunk } from '@zone-eu/mailsplit';

export interface StructureLimits {
  maxHeaderSize: number;
  maxHeaderFields: number;
  maxMimeDepth: number;
  maxMimeParts: number;
}

type PartNode = Extract<SplitterChunk, { type: 'node' }>;

function depthOf(node: PartNode): number {
  let depth = 0;
  for (let p = node.parentNode; p; p = p.parentNode) depth++;
  return depth;
}

/** An attached message mailsplit leaves as a body (an attachment, or not 7bit/8bit): split on its own. */
interface Attached {
  decoder: Transform;
  check: StructureCheck;
}

export class StructureCheck {
  #problem: string | null = null;
  /** The message's own Message-ID (the first header block of the top level). */
  messageId: string | null = null;
  readonly #splitter: Splitter;
  readonly #ended: Promise<void>;
  #attached: Attached | null = null;

  /** `depth` and `parts` carry the counts of the message an attached one sits in. */
  constructor(private readonly limits: StructureLimits, private readonly depth = 0, private readonly parts = { count: 0 }) {
    // The Splitter's own header limit is ours, so a header block is never held past it.
    this.#splitter = new Splitter({ ignoreEmbedded: false, maxHeadSize: limits.maxHeaderSize, maxChildNodes: limits.maxMimeParts + 1 });
    this.#ended = this.#pump().catch((err: NodeJS.ErrnoException) => {
      // Destroyed here once a verdict was made (or the message was refused anyway): no news.
      if (err.code === 'ERR_STREAM_PREMATURE_CLOSE') return;
      this.#problem ??= err.code === 'EMAXLEN' && /header/i.test(err.message)
        ? `a header block larger than ${limits.maxHeaderSize} bytes`
        : err.code === 'EMAXLEN' ? `more than ${limits.maxMimeParts} MIME parts` : `MIME structure that cannot be parsed (${err.message})`;
    }).finally(() => this.#attached?.check.abandon());
  }

  async #pump(): Promise<void> {
    for await (const chunk of this.#splitter as AsyncIterable<SplitterChunk>) {
      if (this.#problem) return;
      if (chunk.type === 'node') {
        await this.#closeAttached();
        this.#node(chunk);
      } else if (chunk.type === 'body' && this.#attached) {
        const { decoder } = this.#attached;
        if (!decoder.write(chunk.value)) await once(decoder, 'drain');
      }
    }
    await this.#closeAttached();
  }

  #node(node: PartNode): void {
    if (this.#problem) return;
    this.parts.count++;
    if (this.depth === 0 && this.parts.count === 1) this.messageId = node.headers ? node.headers.getFirst('message-id').trim().slice(0, 200) || null : null;
    const fields = node.headers ? node.headers.getList().length : 0;
    const depth = this.depth + depthOf(node);
    if (fields > this.limits.maxHeaderFields) this.#fail(`more than ${this.limits.maxHeaderFields} header fields in one header block`);
    else if (depth > this.limits.maxMimeDepth) this.#fail(`MIME nesting deeper than ${this.limits.maxMimeDepth} levels`);
    else if (this.parts.count > this.limits.maxMimeParts) this.#fail(`more than ${this.limits.maxMimeParts} MIME parts`);
    else if (node.contentType === 'message/rfc822' && !node.messageNode) {
      const check = new StructureCheck(this.limits, depth + 1, this.parts);
      const decoder: Transform = node.getDecoder();
      // One chunk at a time: the attached message's splitter sets the pace, so nothing piles up.
      decoder.on('data', (d: Buffer) => {
        decoder.pause();
        void check.write(d).then(() => decoder.resume());
      });
      decoder.on('error', (err: Error) => {
        check.abandon();
        this.#fail(`an attached message that cannot be decoded (${err.message})`);
      });
      this.#attached = { decoder, check };
    }
  }

  async #closeAttached(): Promise<void> {
    const attached = this.#attached;
    if (!attached) return;
    this.#attached = null;
    attached.decoder.end();
    await new Promise<void>((resolve) => finished(attached.decoder, () => resolve()));
    const problem = await attached.check.finish();
    if (problem) this.#fail(problem);
  }

  #fail(problem: string): void {
    this.#problem ??= problem;
    // The verdict is made: the rest of the message need not be split.
    this.#splitter.destroy();
  }

  /** Feeds the next bytes; resolves when the splitter can take more. */
  async write(chunk: Buffer): Promise<void> {
    if (this.#problem || this.#splitter.destroyed) return;
    if (!this.#splitter.write(chunk)) await Promise.race([once(this.#splitter, 'drain').catch(() => undefined), this.#ended]);
  }

  /** The end of the message: the verdict, once the splitter has read everything. */
  async finish(): Promise<string | null> {
    if (!this.#problem && !this.#splitter.destroyed) this.#splitter.end();
    await this.#ended;
    return this.#problem;
  }

  /** The message is refused anyway (too big, bad line endings): stop splitting it. */
  abandon(): void {
    this.#splitter.destroy();
  }
}
