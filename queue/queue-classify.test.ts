import { describe, expect, it } from 'vitest';
import { classifyBounce, type BounceClass } from './queue-classify.js';

/** A reply line as delivery/ records it: the code, the enhanced code parsed out (X.0.0 when none), the whole text. */
function reply(line: string): { code: number; status: string; text: string } {
  const code = Number(line.slice(0, 3));
  const status = /^\d{3}[ -]([245]\.\d{1,3}\.\d{1,3})/.exec(line)?.[1] ?? `${Math.floor(code / 100)}.0.0`;
  return { code, status, text: line };
}

// Reply texts as the big providers send them (multi-line replies joined with " / " as delivery/ does).
const table: Array<[string, string, BounceClass]> = [
  // Unknown or disabled mailboxes.
  ['Gmail, no such account', '550-5.1.1 The email account that you tried to reach does not exist. Please try / 550-5.1.1 double-checking the recipient\'s email address for typos or / 550-5.1.1 unnecessary spaces. Learn more at / 550 5.1.1 https://support.google.com/mail/?p=NoSuchUser x12-20020a05 - gsmtp', 'bad-mailbox'],
  ['Gmail, disabled account', '550 5.2.1 The email account that you tried to reach is disabled. Learn more at https://support.google.com/mail/?p=DisabledUser - gsmtp', 'bad-mailbox'],
  ['Microsoft 365, RecipientNotFound reuses X.1.10', '550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup', 'bad-mailbox'],
  ['Outlook.com, mailbox unavailable as 5.5.0', '550 5.5.0 Requested action not taken: mailbox unavailable (S2017062302) [AM4PEPF00025F97.EURPRD83.prod.outlook.com]', 'bad-mailbox'],
  ['Exchange Online, directory-based edge blocking', '550 5.4.1 Recipient address rejected: Access denied. AS(201806281) [DB5EUR03FT010.eop-EUR03.prod.protection.outlook.com]', 'bad-mailbox'],
  ['Yahoo, no enhanced code', '554 delivery error: dd This user doesn\'t have a yahoo.com account (nobody@yahoo.com) [0] - mta4012.mail.bf1.yahoo.com', 'bad-mailbox'],
  ['Yahoo, disabled mailbox', '554 delivery error: dd Sorry your message to x@yahoo.com cannot be delivered. This mailbox is disabled (554.30). - mta1234.mail.gq1.yahoo.com', 'bad-mailbox'],
  ['iCloud', '550 5.1.1 <nobody@icloud.com>: user does not exist', 'bad-mailbox'],
  ['Postfix, virtual table', '550 5.1.1 <nobody@example.net>: Recipient address rejected: User unknown in virtual mailbox table', 'bad-mailbox'],
  ['Barracuda', '550 cuda_nsu 5.1.1 <nobody@example.net> Recipient address rejected: User unknown', 'bad-mailbox'],
  ['AT&T, 5.2.1 addressee unknown', '550 5.2.1 <NOBODY@PRODIGY.NET>... Addressee unknown, relay=[192.0.2.1]', 'bad-mailbox'],
  ['cPanel/Exim, no code', '550 No Such User Here', 'bad-mailbox'],
  ['the test sink', '550 5.1.1 no such user here', 'bad-mailbox'],
  // Domains that do not exist or take no mail (Ichidan's own outcomes among them).
  ['NXDOMAIN, decided here', '550 5.1.2 domain nowhere.test does not exist (NXDOMAIN)', 'bad-domain'],
  ['null MX, decided here (RFC 7505)', '550 5.1.10 nomail.test does not accept mail (null MX, RFC 7505)', 'bad-domain'],
  ['null MX, bare X.1.10 from a relay', '556 5.1.10 Recipient address has null MX', 'bad-domain'],
  ['mail host without an address, decided here', '550 5.4.4 host mx.broken.test has no address (ENOTFOUND)', 'bad-domain'],
  ['Postfix relay, domain not found', '550 5.1.2 <x@nowhere.example>: Recipient address rejected: Domain not found', 'bad-domain'],
  ['Exim, unrouteable', '550 Unrouteable address', 'bad-domain'],
  // Policy (not spam).
  ['Gmail, unauthenticated sender', '550-5.7.26 This mail has been blocked because the sender is unauthenticated. / 550-5.7.26 Gmail requires all senders to authenticate with either SPF or DKIM. - gsmtp', 'policy'],
  ['Gmail, DMARC', '550 5.7.1 Unauthenticated email from yahoo.com is not accepted due to domain\'s DMARC policy. Please contact administrator of yahoo.com domain if this was a legitimate mail. - gsmtp', 'policy'],
  ['Yahoo, policy reasons', '554 5.7.9 Message not accepted for policy reasons.  See https://postmaster.yahooinc.com/error-codes', 'policy'],
  ['iCloud, local policy', '550 5.7.1 [CS01] Message rejected due to local policy. Please visit https://support.apple.com/en-us/HT204137', 'policy'],
  ['iCloud, Hide My Email turned off', '550 5.7.1 Relay not permitted for user.', 'policy'],
  ['Comcast, DMARC as 5.2.0', '550 5.2.0 meQj1n01053u42A0HeQj3v Message rejected due to DMARC. Please see http://postmaster.comcast.net/smtp-error-codes.php#DM000001', 'policy'],
  // Spam.
  ['Gmail, likely unsolicited', '550-5.7.1 [192.0.2.1 12] Our system has detected that this message is / 550-5.7.1 likely unsolicited mail. To reduce the amount of spam sent to Gmail, / 550-5.7.1 this message has been blocked. - gsmtp', 'spam-block'],
  ['Gmail, rate of unsolicited mail (given up after 4.7.28)', '421-4.7.28 [192.0.2.1] Our system has detected an unusual rate of unsolicited mail originating from your IP address. - gsmtp', 'spam-block'],
  ['Outlook.com, S3150 block list', '550 5.7.1 Unfortunately, messages from [192.0.2.1] weren\'t sent. Please contact your Internet service provider since part of their network is on our block list (S3150). You can also refer your provider to http://mail.live.com/mail/troubleshooting.aspx#errors.', 'spam-block'],
  ['iCloud, Spamhaus DBL', '550 5.7.1 Your email was rejected due to having a domain present in the Spamhaus DBL -- see https://www.spamhaus.org/dbl/', 'spam-block'],
  ['Postfix, DNSBL', '554 5.7.1 Service unavailable; Client host [192.0.2.1] blocked using zen.spamhaus.org', 'spam-block'],
  ['Yahoo, user complaints (given up after TSS04)', '421 4.7.0 [TSS04] Messages from 192.0.2.1 temporarily deferred due to unexpected volume or user complaints - 4.16.55.1; see https://postmaster.yahooinc.com/error-codes', 'spam-complaint'],
  // Full mailboxes.
  ['Gmail, over quota, temporary', '452-4.2.2 The email account that you tried to reach is over quota. Please direct / 452 4.2.2 the recipient to https://support.google.com/mail/?p=OverQuotaTemp - gsmtp', 'quota'],
  ['Gmail, over quota, permanent', '552-5.2.2 The email account that you tried to reach is over quota. - gsmtp', 'quota'],
  ['iCloud, over quota', '552 5.2.2 <x@icloud.com>: user is over quota', 'quota'],
  ['no enhanced code, mailbox full', '552 Requested mail action aborted: mailbox full', 'quota'],
  ['no enhanced code, storage allocation', '552 Requested mail action aborted: exceeded storage allocation', 'quota'],
  // Too big.
  ['Gmail, size limit', '552-5.2.3 Your message exceeded Google\'s message size limits. - gsmtp', 'too-big'],
  ['SIZE, decided here', '552 5.3.4 message larger than the next hop accepts (SIZE)', 'too-big'],
  ['no enhanced code, too large', '552 Message too large', 'too-big'],
  // Other.
  ['a 5.0.0 with nothing telling', '554 5.0.0 Error: transaction failed', 'other'],
  ['connection refused, given up', '451 4.4.1 connection refused (gave up: in the queue longer than queue.maxAge)', 'other'],
  ['temporary lookup failure, given up', '451 4.4.3 MX lookup for slow.test failed: ETIMEOUT (gave up: in the queue longer than queue.maxAge)', 'other'],
];

describe('bounce classification', () => {
  it.each(table)('%s', (_name, line, want) => {
    expect(classifyBounce(reply(line))).toBe(want);
  });

  it('reads the enhanced code even without the text, and the text without a code', () => {
    expect(classifyBounce({ code: 550, status: '5.1.1', text: '' })).toBe('bad-mailbox');
    expect(classifyBounce({ code: 550, status: null, text: '550 user unknown' })).toBe('bad-mailbox');
    expect(classifyBounce({ code: 550, status: '5.7.1', text: '' })).toBe('policy');
    expect(classifyBounce({ code: 451, status: '4.4.4', text: 'no route' })).toBe('other');
  });
});
