/*
 * What kind of failure a final reply reports: a pure function from a destination's reply (its
 * code, its enhanced status code, its text) to one bounce class, so that suppression
 * (queue-suppression.ts), the logs, `ichidan queue` and the metric speak of bounces by kind.
 *
 * Takes: the reply as delivery/ recorded it (`code`, `status` — "5.1.1", or the class's X.0.0 when
 *   the destination gave none —, the whole reply text) or as Ichidan decided it itself
 *   (NXDOMAIN 5.1.2, null MX 5.1.10, no address 5.4.4, SIZE 5.3.4: base/base-outcome.ts).
 * Gives: one `BounceClass`:
 *   bad-mailbox     the mailbox does not exist or is disabled (X.1.1, X.1.3, X.1.6, X.2.1; "user unknown" …)
 *   bad-domain      the domain does not exist or takes no mail (X.1.2, X.1.10 null MX, 5.4.4; NXDOMAIN …)
 *   policy          refused by the destination's policy, not as spam (X.7.x: DMARC, authentication …)
 *   spam-block      refused as spam, or the sender is on a block list
 *   spam-complaint  refused because of the destination's users' complaints
 *   quota           the mailbox is full (X.2.2, "over quota", "mailbox full")
 *   too-big         the message is larger than the destination takes (X.2.3, X.3.4)
 *   other           anything else
 * How: the enhanced code's subject and detail first, the text where the code says little (X.0.0,
 *   X.5.0, a generic X.7.x, or a provider known to reuse a code); X.1.10 is null MX (RFC 7505)
 *   unless the text is Microsoft's "RecipientNotFound", which reuses it for unknown recipients.
 * RFCs: 3463 (enhanced status codes), 7505 (null MX), 5321 (reply codes).
 * No inbound path reads DSNs that other MTAs send back for tenants' mail: the replies Ichidan's
 * own deliveries got are what is classified.
 */

export const BOUNCE_CLASSES = ['bad-mailbox', 'bad-domain', 'policy', 'spam-block', 'spam-complaint', 'quota', 'too-big', 'other'] as const;
export type BounceClass = (typeof BOUNCE_CLASSES)[number];

export interface FinalReply {
  code: number;
  /** The enhanced status code (RFC 3463), e.g. "5.1.1"; empty or X.0.0 when none was given. */
  status: string | null;
  text: string;
}

const COMPLAINT = /\bcomplain(t|ts|ed)\b/;
const SPAM = /\bspam|unsolicited|\bblock ?list|\bblack ?list|\bblocked using\b|spamhaus|\bdnsbl\b|\brbl\b|\breputation\b|\bjunk mail\b/;
const NULL_MX = /\bnull mx\b/;
const NO_DOMAIN = /\bnxdomain\b|domain (name )?(does not|doesn't) exist|domain not found|host or domain name not found|unrouteable address|no such domain/;
const QUOTA = /over ?quota|quota (exceeded|full)|exceeds? (its |the |his |her )?(storage |mailbox )?quota|(mailbox|inbox|account|storage|recipient) (is )?full|exceeded storage allocation/;
const TOO_BIG = /(message|mail) (is )?too (big|large)|exceeds? (the )?(maximum |max )?(message )?size|size limit|message size violation|message length exceeds/;
const NO_MAILBOX = /user ?unknown|unknown (user|recipient|mailbox|address)|no such (user|mailbox|recipient|person|address|account)|mailbox (is )?(unavailable|not found|disabled|inactive)|(account|address|user|mailbox|recipient) (does not|doesn't|did not) exist|doesn't have an? [\w.-]+ account|recipient ?not ?found|invalid (recipient|mailbox|user)|addressee unknown|(account|mailbox) (has been |is )?(disabled|deactivated|suspended)|not a valid (mailbox|user|recipient)|no mailbox here|you tried to reach (does not exist|is disabled)/;
/** Microsoft's directory-based edge blocking: an unknown recipient told as 5.4.1 "Access denied". */
const MS_UNKNOWN_RECIPIENT = /recipient address rejected: access denied\. as\(201806281\)/;

/** The class of a final reply (a pure function; see the table test beside it). */
export function classifyBounce(reply: FinalReply): BounceClass {
  const text = reply.text.toLowerCase();
  const [, subject = '0', detail = '0'] = /^[245]\.(\d{1,3})\.(\d{1,3})$/.exec(reply.status ?? '') ?? [];
  const code = `${subject}.${detail}`;
  const permanent = reply.code >= 500;
  if (subject === '7') return spamClass(text) ?? 'policy';
  switch (code) {
    case '1.1': case '1.3': case '1.6': case '2.1':
      return 'bad-mailbox';
    case '1.2':
      return 'bad-domain';
    case '1.10':
      return /recipientnotfound|recipient not found/.test(text) ? 'bad-mailbox' : 'bad-domain';
    case '2.2':
      return 'quota';
    case '2.3': case '3.4':
      return 'too-big';
    case '4.4':
      if (permanent) return 'bad-domain';
      break;
    case '4.1':
      if (MS_UNKNOWN_RECIPIENT.test(text)) return 'bad-mailbox';
      break;
  }
  return fromText(text);
}

function spamClass(text: string): BounceClass | null {
  if (COMPLAINT.test(text)) return 'spam-complaint';
  if (SPAM.test(text)) return 'spam-block';
  return null;
}

/** Where the code says little: the text's words, the narrowest first. */
function fromText(text: string): BounceClass {
  const spam = spamClass(text);
  if (spam) return spam;
  if (NULL_MX.test(text) || NO_DOMAIN.test(text)) return 'bad-domain';
  if (QUOTA.test(text)) return 'quota';
  if (TOO_BIG.test(text)) return 'too-big';
  if (NO_MAILBOX.test(text)) return 'bad-mailbox';
  if (/\bpolicy\b|\bdmarc\b|not permitted|access denied/.test(text)) return 'policy';
  return 'other';
}
