/*
 * The enhanced status codes (RFC 3463) of the delivery outcomes Ichidan decides itself — when no
 * destination gave a reply to pass on: a host that never answered, a lookup that failed, a TLS
 * requirement not met. Each name says the situation; the code's class (4 or 5) says whether the
 * recipient is retried. Replies a destination gave keep their own codes.
 *
 * Spoken by delivery (route, transaction, TLS), the queue (attempt outcomes, notices) and the
 * proxy (its temporary failures toward the client).
 */
export const STATUS = {
  /** X.0.0: a temporary failure with nothing more specific known. */
  otherTransient: '4.0.0',
  /** X.0.0: a permanent failure with nothing more specific known. */
  otherPermanent: '5.0.0',
  /** X.1.2: the destination domain does not exist (NXDOMAIN). */
  noSuchDomain: '5.1.2',
  /** X.1.10: the domain publishes a null MX (RFC 7505): it accepts no mail. */
  nullMx: '5.1.10',
  /** X.3.4: the message is larger than the next hop accepts (its SIZE). */
  tooBigForHop: '5.3.4',
  /** X.4.1: no answer from the host (refused, timed out, no address to try). */
  noAnswer: '4.4.1',
  /** X.4.2: the connection broke or the session failed after it was open. */
  badConnection: '4.4.2',
  /** X.4.3: a DNS lookup failed or none is configured. */
  lookupFailed: '4.4.3',
  /** X.4.4: no route for the domain. */
  noRoute: '4.4.4',
  /** X.4.4 (permanent): the mail host has no address. */
  hostWithoutAddress: '5.4.4',
  /** X.4.5: congestion on this side (a turn not given in time, the client left). */
  congestion: '4.4.5',
  /** X.7.1: delivery not allowed now (a hold, a pause, a rate in force). */
  notAllowedNow: '4.7.1',
  /** X.7.5: the TLS the destination's policy requires could not be had. */
  tlsRequired: '4.7.5',
} as const;

export type Status = (typeof STATUS)[keyof typeof STATUS];

/** The whole reply line of a temporary outcome decided here: "451 <status> <text>". */
export const deferReply = (status: string, text: string): string => `451 ${status} ${text}`;
