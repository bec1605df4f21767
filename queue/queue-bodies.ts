/*
 * The message as delivery reads it: Ichidan's trace headers, then the body — from memory for a
 * recently accepted small message (saving a file read at its first delivery), else from its spool
 * file — with the body's own copies of the fields Ichidan added left out when the message has a
 * strip rule (queue-headers.ts).
 *
 * Takes: the bytes a spool writer kept in memory (messages up to queue-spool.ts KEEP_IN_MEMORY_MAX),
 *   at accept; the message row, at each delivery or notice.
 * Gives: a stream opened only when read and always closed. The memory held stays under
 *   RECENT_BODIES_BUDGET, oldest first out; a swept message is forgotten.
 */
import { Readable } from 'node:stream';
import { HeaderStrip, parseStripRule, type StripRule } from './queue-headers.js';
import type { Spool } from './queue-spool.js';
import type { MessageRow } from './queue-store.js';

/** Bytes of recently accepted small messages kept in memory. */
const RECENT_BODIES_BUDGET = 16 * 1024 * 1024;

/** Trace headers then the body; the body is opened only when read and always closed. */
function messageStream(trace: string, openBody: () => Readable, strip: StripRule | null): Readable {
  return Readable.from((async function* () {
    if (trace) yield Buffer.from(trace, 'utf8');
    const raw = openBody();
    const body = strip ? raw.pipe(new HeaderStrip(strip)) : raw;
    if (strip) raw.on('error', (err) => body.destroy(err));
    try {
      yield* body;
    } finally {
      raw.destroy();
      body.destroy();
    }
  })(), { objectMode: false });
}

export class MessageBodies {
  /** id → body of recently accepted small messages (insertion order = eviction order). */
  readonly #recent = new Map<string, Buffer>();
  #recentBytes = 0;

  constructor(private readonly spool: Spool) {}

  /** Keeps an accepted message's body (a copy, not views into socket buffers). */
  remember(id: string, body: Buffer): void {
    this.#recent.set(id, body);
    this.#recentBytes += body.length;
    for (const [oldId, old] of this.#recent) {
      if (this.#recentBytes <= RECENT_BODIES_BUDGET) break;
      this.#recent.delete(oldId);
      this.#recentBytes -= old.length;
    }
  }

  forget(id: string): void {
    const body = this.#recent.get(id);
    if (!body) return;
    this.#recent.delete(id);
    this.#recentBytes -= body.length;
  }

  /** The message as delivered: Ichidan's trace headers, then the body from memory or the spool file. */
  open(msg: MessageRow): Readable {
    const body = this.#recent.get(msg.id);
    return messageStream(msg.trace, () => (body ? Readable.from([body]) : this.spool.read(msg.id)), parseStripRule(msg.strip));
  }
}
