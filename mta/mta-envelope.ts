/*
 * Envelope addresses as bytes: what MAIL FROM and RCPT TO may carry beyond ASCII.
 *
 * Takes: the command line's bytes as received (smtp-server decodes them as UTF-8, turning bad
 * sequences into U+FFFD and A-label domains into U-labels, so the decoded address cannot tell;
 * the bytes come through the smtp-server patch as `rawCommand`) and whether MAIL FROM carried
 * SMTPUTF8. Gives: null, or the refusal:
 * - 501 5.5.4 for a command that is not valid UTF-8: it is refused, never rewritten and passed on;
 * - 553 5.6.7 for an 8-bit address in a transaction without SMTPUTF8 (RFC 6531 section 3.5).
 * RFC 6531, RFC 6532 section 3.2 (UTF-8 only where SMTPUTF8 was given), RFC 3463.
 */
import { isUtf8 } from 'node:buffer';
import { REPLIES, type SmtpReply } from './mta-reply.js';

export function addressRefusal(rawCommand: Buffer | undefined, smtpUtf8: boolean): SmtpReply | null {
  if (!rawCommand) return null;
  if (!isUtf8(rawCommand)) return REPLIES.invalidUtf8Address;
  // Parameters are xtext (ASCII): any 8-bit byte on the line is in the address.
  if (!smtpUtf8 && rawCommand.some((b) => b >= 0x80)) return REPLIES.utf8AddressNeedsSmtputf8;
  return null;
}
