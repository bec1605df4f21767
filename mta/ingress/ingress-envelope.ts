/*
 * Envelope addresses as bytes: what MAIL FROM and RCPT TO may carry beyond ASCII.
 *
 * Takes: the command line's bytes as received (smtp-server decodes them as UTF-8, turning bad
 * sequences into U+FFFD and A-label domains into U-labels, so the decoded address cannot tell;
 * the bytes come through the smtp-server patch as `rawCommand`) and whether MAIL FROM carried
 * SMTPUTF8. Gives: null, or the refusal:
 * - 501 5.5.4 for a command that is not valid UTF-8: it is refused, never rewritten and passed on;
 * - 553 5.6.7 for an 8-bit address in a transaction without SMTPUTF8 (RFC 6531 section 3.5).
 * smtp-server applies a MAIL FROM's parameters (SMTPUTF8, BODY, RET, ENVID, REQUIRETLS) to the
 * session's envelope before the handler decides, and leaves them there when it refuses:
 * `clearMailParameters` puts them back, so a later MAIL FROM does not inherit them.
 * RFC 6531, RFC 6532 section 3.2 (UTF-8 only where SMTPUTF8 was given), RFC 3463.
 */
import { isUtf8 } from 'node:buffer';
import { REPLIES, type SmtpReply } from '../../base/base-reply.js';

type Parsed = { rawCommand?: Buffer; args?: Record<string, unknown> | false };

/**
 * MAIL FROM as smtp-server hands it to the handler, judged by its own SMTPUTF8 parameter: the
 * session's envelope still holds the parameters of an earlier MAIL FROM that was refused.
 */
export function mailFromRefusal(address: object): SmtpReply | null {
  const parsed = address as Parsed;
  return addressRefusal(parsed.rawCommand, !!parsed.args && parsed.args.SMTPUTF8 === true);
}

/** RCPT TO, judged by the parameters of the transaction's (accepted) MAIL FROM. */
export function rcptToRefusal(address: object, session: { envelope: object }): SmtpReply | null {
  const mailFrom = (session.envelope as { mailFrom?: Parsed | false }).mailFrom;
  return addressRefusal((address as Parsed).rawCommand, !!mailFrom && !!mailFrom.args && mailFrom.args.SMTPUTF8 === true);
}

export function addressRefusal(rawCommand: Buffer | undefined, smtpUtf8: boolean): SmtpReply | null {
  if (!rawCommand) return null;
  if (!isUtf8(rawCommand)) return REPLIES.invalidUtf8Address;
  // Parameters are xtext (ASCII): any 8-bit byte on the line is in the address.
  if (!smtpUtf8 && rawCommand.some((b) => b >= 0x80)) return REPLIES.utf8AddressNeedsSmtputf8;
  return null;
}

/** A refused MAIL FROM leaves no parameters behind (a MAIL FROM only comes when no transaction is open). */
export function clearMailParameters(envelope: object): void {
  const env = envelope as { requireTLS?: boolean; bodyType?: string; smtpUtf8?: boolean; dsn?: { ret: string | null; envid: string | null } };
  env.requireTLS = false;
  env.bodyType = '7bit';
  env.smtpUtf8 = false;
  if (env.dsn) env.dsn = { ret: null, envid: null };
}
