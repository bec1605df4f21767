/*
 * One envelope said on an SmtpConnection: MAIL FROM, a RCPT TO per recipient and DATA, pipelined
 * when the server offers PIPELINING (RFC 2920), one at a time otherwise, with the parameters
 * the server's extensions allow.
 *
 * Takes: the connection (after its handshake), the sender, the recipients with their DSN
 *   parameters, and the message's size, 8-bit flag, RET and ENVID.
 * Gives: the replies as they came — to MAIL, to each RCPT sent, to DATA (null when DATA was not
 *   sent: the sender or every recipient refused, one at a time). Judging them is the caller's
 *   business (delivery-smtp.ts). A connection that breaks rejects, as its calls do.
 * Parameters: SIZE=n (SIZE, RFC 1870), BODY=8BITMIME (8BITMIME, RFC 6152), SMTPUTF8 for a
 *   non-ASCII address (SMTPUTF8, RFC 6531), RET and ENVID on MAIL, NOTIFY and ORCPT on RCPT
 *   (DSN, RFC 3461, values as xtext); each only when the server offered its extension; and
 *   the parameters the envelope itself carries (a cluster transfer's), always.
 */
import type { SmtpConnection } from './smtp-connection.js';
import { xtext, type Reply } from './smtp-wire.js';

export interface EnvelopeRecipient {
  address: string;
  notify: string | null;
  orcpt: string | null;
  /** Further RCPT parameters, said as given (a cluster transfer's: queue/cluster/cluster-transfer.ts). */
  parameters?: string[];
}

export interface Envelope {
  sender: string;
  recipients: EnvelopeRecipient[];
  size: number;
  body8bit: boolean;
  ret: string | null;
  envid: string | null;
  /** Further MAIL parameters, said as given (a cluster transfer's). */
  parameters?: string[];
}

export interface EnvelopeReplies {
  mail: Reply;
  /** One per recipient, in order, for the RCPTs that were sent. */
  rcpt: Reply[];
  data: Reply | null;
}

const NON_ASCII = /[\u0080-\uFFFF]/;

export function isPositive(r: Reply): boolean {
  return r.code >= 200 && r.code < 300;
}

/** The MAIL FROM line for this envelope on this connection. */
export function mailLine(conn: SmtpConnection, e: Envelope): string {
  const has = (ext: string) => conn.extensions.has(ext);
  const args: string[] = [];
  if (has('SMTPUTF8') && [e.sender, ...e.recipients.map((r) => r.address)].some((a) => NON_ASCII.test(a))) args.push('SMTPUTF8');
  if (e.body8bit && has('8BITMIME')) args.push('BODY=8BITMIME');
  if (e.size > 0 && has('SIZE')) args.push(`SIZE=${e.size}`);
  if (has('DSN')) {
    if (e.ret) args.push(`RET=${xtext(dsnRet(e.ret))}`);
    if (e.envid) args.push(`ENVID=${xtext(e.envid)}`);
  }
  if (e.parameters) args.push(...e.parameters);
  return `MAIL FROM:<${e.sender}>${args.length ? ' ' + args.join(' ') : ''}`;
}

/** The RCPT TO line for one recipient on this connection. */
export function rcptLine(conn: SmtpConnection, r: EnvelopeRecipient): string {
  const args: string[] = [];
  if (conn.extensions.has('DSN')) {
    if (r.notify) args.push(`NOTIFY=${xtext(r.notify.split(',').map((n) => n.trim().toUpperCase()).join(','))}`);
    if (r.orcpt) args.push(`ORCPT=${xtext(r.orcpt.includes(';') ? r.orcpt : `rfc822;${r.orcpt}`)}`);
  }
  if (r.parameters) args.push(...r.parameters);
  return `RCPT TO:<${r.address}>${args.length ? ' ' + args.join(' ') : ''}`;
}

function dsnRet(ret: string): string {
  const r = ret.toUpperCase();
  return r === 'HEADERS' ? 'HDRS' : r === 'BODY' ? 'FULL' : r;
}

/** Says the envelope; with PIPELINING all of it in one write, DATA included. */
export async function sendEnvelope(conn: SmtpConnection, e: Envelope): Promise<EnvelopeReplies> {
  const mail = mailLine(conn, e);
  const rcpts = e.recipients.map((r) => rcptLine(conn, r));
  if (conn.extensions.has('PIPELINING')) {
    const replies = await conn.pipeline([mail, ...rcpts, 'DATA']);
    return { mail: replies[0], rcpt: replies.slice(1, -1), data: replies[replies.length - 1] };
  }
  const mailReply = await conn.command(mail);
  if (!isPositive(mailReply)) return { mail: mailReply, rcpt: [], data: null };
  const rcpt: Reply[] = [];
  for (const line of rcpts) {
    const reply = await conn.command(line);
    rcpt.push(reply);
    // 421: the server is closing; it answers every command not yet said, DATA included.
    if (reply.code === 421) return { mail: mailReply, rcpt: rcpts.map((_, i) => rcpt[i] ?? reply), data: reply };
  }
  if (!rcpt.some(isPositive)) return { mail: mailReply, rcpt, data: null };
  return { mail: mailReply, rcpt, data: await conn.command('DATA') };
}
