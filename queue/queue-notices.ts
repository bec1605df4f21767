/*
 * Writing a delivery status notice (RFC 3464) into the spool as a message of its own.
 *
 * Takes: the original message row, the recipients the notice reports (their rows as they stand
 *   after the attempt), the action ('failed': a bounce, 'delayed': a delay warning), now.
 * Gives: the committed spool file and the queue record to insert for it — from the null sender,
 *   to the original sender, NOTIFY=NEVER, so a notice never causes another. The caller inserts
 *   the record in the same transaction as the outcomes it reports (queue/index.ts), or discards
 *   the file. The original comes back whole when it is at most RETURN_FULL_LIMIT bytes and
 *   RET allows, else headers only (queue-bounce.ts builds the text).
 * A notice is not new mail: it may use the room below queue.minFree.
 * RFCs: 3464, 3461 (RET, ENVID, ORCPT). Settings: hostname, queue.maxAge (the "retried until").
 */
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { newQueueId } from '../base/base-queue-id.js';
import { buildNotice, readHeaderSection, type NoticeAction } from './queue-bounce.js';
import type { Spool, SpoolWriter } from './queue-spool.js';
import type { MessageRow, NewMessage, RecipientRow } from './queue-store.js';

/** Largest original returned whole in a bounce; larger ones come back as headers only. */
const RETURN_FULL_LIMIT = 50_000;

export interface WrittenNotice {
  writer: SpoolWriter;
  message: NewMessage;
  action: NoticeAction;
}

export interface NoticeContext {
  spool: Spool;
  hostname: string;
  /** queue.maxAge: a delay warning says until when the message is retried. */
  maxAge: number;
  /** The original as delivered (queue-bodies.ts). */
  open: (msg: MessageRow) => Readable;
}

export async function writeNotice(ctx: NoticeContext, msg: MessageRow, recipients: RecipientRow[], action: NoticeAction, now: number): Promise<WrittenNotice> {
  const returnFull = msg.size <= RETURN_FULL_LIMIT;
  const parts = buildNotice({ hostname: ctx.hostname, message: msg, recipients, action, now, willRetryUntil: msg.received_at + ctx.maxAge }, returnFull);
  const writer = await ctx.spool.createWriter(newQueueId());
  const open = () => ctx.open(msg);
  try {
    await pipeline(Readable.from((async function* () {
      yield Buffer.from(parts.head);
      if (parts.returnBody) yield* open();
      else yield await readHeaderSection(open());
      yield Buffer.from(parts.tail);
    })()), writer);
    await writer.commit();
  } catch (err) {
    await writer.discard();
    throw err;
  }
  const domain = msg.sender.slice(msg.sender.lastIndexOf('@') + 1).toLowerCase();
  const tenant = recipients[0].tenant;
  return {
    writer,
    action,
    message: {
      id: writer.id, size: writer.bytes, sender: '', receivedAt: now, trace: '', ret: null, envid: null,
      smtputf8: msg.smtputf8 === 1, body8bit: true, client: '', helo: '', authUser: null, listener: 'notice', kind: 'dsn',
      recipients: [{ tenant, address: msg.sender, domain, orcpt: null, notify: 'NEVER' }],
    },
  };
}
