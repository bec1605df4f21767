/*
 * Delivery outcomes decided but not yet committed to the queue database.
 *
 * Takes: the recipient updates of an attempt whose commit failed (a full disk, a failing database)
 *   after the destination had answered.
 * Gives: those updates, kept in memory and committed again with growing delays (1s, 2s, 4s … up
 *   to a minute) until the database takes them; then `committed` is called with them, so the
 *   queue schedules what is still queued. Until then `owes(message, recipient)` is true, and the
 *   queue never starts another attempt for that recipient: a delivered message is never sent
 *   again because its outcome could not be written.
 * The limit of the guarantee: outcomes still uncommitted when the process ends are lost with it
 *   (the log names them), and those recipients are tried again at the next start.
 * Network: none.
 */
import type { Logger } from 'pino';
import type { QueueStore, RecipientUpdate } from './queue-store.js';

const FIRST_RETRY_MS = 1000;
const MAX_RETRY_MS = 60_000;

interface Entry {
  updates: Map<number, RecipientUpdate>;
  now: number;
  tries: number;
  timer: NodeJS.Timeout | null;
}

export class PendingOutcomes {
  readonly #entries = new Map<string, Entry>();

  /** `committed` runs once a message's kept updates are durable, with the recipients they were for. */
  constructor(private readonly store: QueueStore, private readonly log: Logger, private readonly committed: (messageId: string, recipientIds: number[]) => void) {}

  get size(): number {
    let n = 0;
    for (const e of this.#entries.values()) n += e.updates.size;
    return n;
  }

  /** Whether an outcome of this recipient is waiting to be committed. */
  owes(messageId: string, recipientId: number): boolean {
    return this.#entries.get(messageId)?.updates.has(recipientId) ?? false;
  }

  /** Keeps the updates of one message and commits them later. */
  keep(messageId: string, updates: RecipientUpdate[], now: number, err: unknown): void {
    const entry = this.#entries.get(messageId);
    if (entry) {
      for (const u of updates) entry.updates.set(u.id, u);
    } else {
      this.#entries.set(messageId, { updates: new Map(updates.map((u) => [u.id, u])), now, tries: 0, timer: null });
      this.#arm(messageId);
    }
    this.log.error({ err, qid: messageId, recipients: updates.map((u) => ({ id: u.id, state: u.state })) },
      'could not record delivery outcomes; kept in memory and retried without contacting the destination again');
  }

  #arm(messageId: string): void {
    const entry = this.#entries.get(messageId)!;
    const delay = Math.min(MAX_RETRY_MS, FIRST_RETRY_MS * 2 ** entry.tries);
    entry.timer = setTimeout(() => void this.#retry(messageId), delay);
  }

  async #retry(messageId: string): Promise<void> {
    const entry = this.#entries.get(messageId);
    if (!entry) return;
    entry.timer = null;
    entry.tries++;
    const updates = [...entry.updates.values()];
    try {
      await this.store.write([{ op: 'updateRecipients', messageId, updates, now: entry.now }], { essential: true });
    } catch (err) {
      if (entry.tries === 1 || entry.tries % 10 === 0) this.log.warn({ err, qid: messageId, tries: entry.tries }, 'delivery outcomes still not recorded; retrying');
      this.#arm(messageId);
      return;
    }
    // Updates kept while this commit ran (another lane of the same message) wait for the next one.
    for (const u of updates) if (entry.updates.get(u.id) === u) entry.updates.delete(u.id);
    if (entry.updates.size === 0) this.#entries.delete(messageId);
    else this.#arm(messageId);
    this.log.info({ qid: messageId, recipients: updates.length, tries: entry.tries }, 'delivery outcomes recorded after a failed commit');
    this.committed(messageId, updates.map((u) => u.id));
  }

  /** One last commit of everything still owed (at stop); what still fails is logged by name. */
  async close(): Promise<void> {
    for (const [messageId, entry] of this.#entries) {
      if (entry.timer) clearTimeout(entry.timer);
      const updates = [...entry.updates.values()];
      try {
        await this.store.write([{ op: 'updateRecipients', messageId, updates, now: entry.now }], { essential: true });
      } catch (err) {
        this.log.error({ err, qid: messageId, recipients: updates.map((u) => ({ id: u.id, state: u.state })) },
          'delivery outcomes lost at stop: these recipients will be tried again at the next start');
      }
    }
    this.#entries.clear();
  }
}
