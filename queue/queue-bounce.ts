/*
 * Delivery status notifications (RFC 3464 multipart/report, RFC 3461 semantics).
 *
 * Builds the text of a bounce ("failed") or delay notice ("delayed") for some recipients of one
 * message: a human-readable part, the machine-readable message/delivery-status part, and the
 * original message (full when RET=FULL or unspecified and it fits `returnLimit`, headers only
 * otherwise). The notice goes to the original envelope sender with the null sender as its own,
 * so it can never cause another notice. Who gets a notice at all is decided by `wantsNotice`.
 */
import { randomBytes } from 'node:crypto';
import type { Readable } from 'node:stream';
import type { MessageRow, RecipientRow } from './queue-store.js';
import { STATUS } from '../base/base-outcome.js';

export type NoticeAction = 'failed' | 'delayed';

/** RFC 3461: NOTIFY=NEVER never; an explicit list only for its events; absent means failures (and delays if configured). */
export function wantsNotice(message: Pick<MessageRow, 'sender'>, rcpt: Pick<RecipientRow, 'notify'>, action: NoticeAction): boolean {
  if (message.sender === '') return false;
  const notify = (rcpt.notify ?? '').toUpperCase().split(',').map((s) => s.trim()).filter(Boolean);
  if (notify.includes('NEVER')) return false;
  if (notify.length === 0) return true;
  return notify.includes(action === 'failed' ? 'FAILURE' : 'DELAY');
}

function rfc5322Date(ms: number): string {
  return new Date(ms).toUTCString().replace('GMT', '+0000');
}

export interface NoticeInput {
  hostname: string;
  message: MessageRow;
  recipients: RecipientRow[];
  action: NoticeAction;
  now: number;
  /** When the queue gives up on the delayed recipients (for delay notices). */
  willRetryUntil?: number;
}

export interface NoticeParts {
  head: string;
  tail: string;
  /** Whether the original's body is returned (the caller streams it between head and tail). */
  returnBody: boolean;
}

/**
 * The notice without the original message: `head` ends where the returned message (trace headers
 * then the spool file, or only its header section) goes, `tail` closes the report.
 */
export function buildNotice(input: NoticeInput, returnFull: boolean): NoticeParts {
  const { hostname, message, recipients, action, now } = input;
  const boundary = `=_ichidan_${randomBytes(9).toString('base64url')}`;
  const subject = action === 'failed' ? 'Undelivered Mail Returned to Sender' : 'Delayed Mail (still being retried)';
  const human = action === 'failed'
    ? 'This is the mail system at host ' + hostname + '.\r\n\r\nYour message could not be delivered to one or more recipients.\r\nThe details are below; the original message is attached.\r\n'
    : 'This is the mail system at host ' + hostname + '.\r\n\r\nYour message has not been delivered yet to one or more recipients.\r\nIt will be retried until ' + rfc5322Date(input.willRetryUntil ?? now) + '; you need not resend it.\r\n';
  const lines = recipients.map((r) => `<${r.address}>: ${r.last_reply ?? r.last_status ?? 'no reply recorded'}`).join('\r\n');

  let status = `Reporting-MTA: dns; ${hostname}\r\nX-Ichidan-Queue-ID: ${message.id}\r\n`;
  if (message.envid) status += `Original-Envelope-Id: ${message.envid}\r\n`;
  status += `Arrival-Date: ${rfc5322Date(message.received_at)}\r\n`;
  for (const r of recipients) {
    status += '\r\n';
    if (r.orcpt) status += `Original-Recipient: ${r.orcpt.includes(';') ? r.orcpt : `rfc822;${r.orcpt}`}\r\n`;
    status += `Final-Recipient: rfc822; ${r.address}\r\n`;
    status += `Action: ${action}\r\n`;
    status += `Status: ${r.last_status ?? (action === 'failed' ? STATUS.otherPermanent : STATUS.otherTransient)}\r\n`;
    if (r.last_host) status += `Remote-MTA: dns; ${r.last_host.replace(/\[.*$/, '')}\r\n`;
    if (r.last_reply) status += `Diagnostic-Code: smtp; ${r.last_reply.replace(/\r?\n/g, ' ')}\r\n`;
    status += `Last-Attempt-Date: ${rfc5322Date(r.updated_at || now)}\r\n`;
    if (action === 'delayed' && input.willRetryUntil) status += `Will-Retry-Until: ${rfc5322Date(input.willRetryUntil)}\r\n`;
  }

  const returnBody = returnFull && (message.ret ?? 'FULL').toUpperCase() !== 'HDRS';
  const head =
    `From: Mail Delivery System <MAILER-DAEMON@${hostname}>\r\n` +
    `To: <${message.sender}>\r\n` +
    `Subject: ${subject}\r\n` +
    `Date: ${rfc5322Date(now)}\r\n` +
    `Message-ID: <${message.id}.${action}.${now}@${hostname}>\r\n` +
    'Auto-Submitted: auto-replied\r\n' +
    'MIME-Version: 1.0\r\n' +
    `Content-Type: multipart/report; report-type=delivery-status; boundary="${boundary}"\r\n` +
    '\r\n' +
    'This is a MIME-encapsulated message.\r\n\r\n' +
    `--${boundary}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n${human}\r\n${lines}\r\n\r\n` +
    `--${boundary}\r\nContent-Type: message/delivery-status\r\n\r\n${status}\r\n` +
    `--${boundary}\r\nContent-Type: ${returnBody ? 'message/rfc822' : 'text/rfc822-headers'}\r\nContent-Transfer-Encoding: 8bit\r\n\r\n`;
  const tail = `\r\n--${boundary}--\r\n`;
  return { head, tail, returnBody };
}

/** Reads the header section (up to the first empty line) of a message stream. */
export async function readHeaderSection(stream: Readable, limit = 256 * 1024): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let total = 0;
  for await (const chunk of stream as AsyncIterable<Buffer>) {
    chunks.push(chunk);
    total += chunk.length;
    const all = Buffer.concat(chunks);
    const end = all.indexOf('\r\n\r\n');
    if (end >= 0) {
      stream.destroy();
      return all.subarray(0, end + 2);
    }
    if (total >= limit) {
      stream.destroy();
      return all.subarray(0, limit);
    }
  }
  return Buffer.concat(chunks);
}

