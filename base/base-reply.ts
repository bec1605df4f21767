/*
 * SMTP replies as values, and the one place that turns them into what smtp-server expects.
 *
 * Every reply Ichidan itself gives to a client is an `SmtpReply { code, enhanced, text }` from this
 * catalogue (RFC 5321 codes, RFC 3463 enhanced codes): the fixed ones in `REPLIES`, the ones that
 * carry a detail as the functions below it. `toSmtpError` makes the Error whose `responseCode`
 * smtp-server sends; `replyText` the text of a success. Internal failures never reach the peer as text: they go to the log and the
 * peer gets the bland, correct reply for the situation.
 */
export interface SmtpReply {
  code: number;
  enhanced: string;
  text: string;
}

export const reply = (code: number, enhanced: string, text: string): SmtpReply => ({ code, enhanced, text });

export const REPLIES = {
  relayDenied: reply(550, '5.7.1', 'relay denied'),
  routingDenied: reply(550, '5.7.1', 'relay denied: sender-specified routing (%, !) is not allowed'),
  authRequired: reply(530, '5.7.0', 'authentication required'),
  tooManyRecipients: reply(452, '4.5.3', 'too many recipients'),
  badLineEndings: reply(550, '5.6.0', 'bare CR or LF in message data, message refused (RFC 5321 section 2.3.8)'),
  tooBig: reply(552, '5.3.4', 'message too big: it exceeds the maximum message size'),
  storageFull: reply(452, '4.3.1', 'insufficient system storage, try again later'),
  localError: reply(451, '4.3.0', 'local error in processing, try again later'),
  dataTimeout: reply(421, '4.4.2', 'timeout while receiving message data, closing connection'),
  sessionFailed: reply(421, '4.3.0', 'local error in processing, closing connection'),
  badRecipient: reply(553, '5.1.3', 'bad recipient address syntax'),
  nulInData: reply(550, '5.6.0', 'message refused: NUL characters in message data'),
  invalidUtf8Address: reply(501, '5.5.4', 'address is not valid UTF-8'),
  utf8AddressNeedsSmtputf8: reply(553, '5.6.7', 'non-ASCII addresses need the SMTPUTF8 parameter on MAIL FROM (RFC 6531)'),
  tooManyConnections: reply(421, '4.7.0', 'too many connections from your address, try again later'),
  connectionRate: reply(421, '4.7.0', 'too many connections from your address in a short time, try again later'),
  messageRate: reply(450, '4.7.1', 'too much mail from your address, try again later'),
  authInvalid: reply(535, '5.7.8', 'authentication credentials invalid'),
  authUnavailable: reply(454, '4.7.0', 'temporary authentication failure, try again later'),
  authTooManyFailures: reply(421, '4.7.0', 'too many failed authentication attempts, closing connection'),
  commandDeadline: reply(421, '4.4.2', 'timeout: command line not complete in time, closing connection'),
  dataTooSlow: reply(421, '4.4.2', 'timeout: message data arriving too slowly, closing connection'),
  needMail: reply(503, '5.5.1', 'need MAIL command'),
  /** A node being drained (`ichidan node drain`): new connections are turned away, the client tries another MX. */
  draining: reply(421, '4.3.2', 'this server is being drained and takes no new mail, try another'),
  drainingMail: reply(451, '4.3.2', 'this server is being drained and takes no new mail, try another'),
  /** A cluster transfer's parameters from a client that is not a peer, or that do not hold (queue/cluster/cluster-transfer.ts). */
  transferRefused: reply(555, '5.5.4', 'parameter not recognized'),
  scanTempfail: reply(451, '4.7.1', 'message could not be scanned now, try again later'),
  spam: reply(550, '5.7.1', 'message refused as spam'),
  /** Admission (mta/admission/): what an unknown sender gets while the node is under pressure. */
  overloaded: reply(421, '4.7.0', 'server busy with other mail, try again later'),
  overloadedRcpt: reply(451, '4.7.1', 'server busy with other mail, try again later'),
  reserveFull: reply(421, '4.7.0', 'too many connections, try again later'),
  busyConnections: reply(421, '4.7.0', 'too many connections from your network while the server is busy, try again later'),
  busyRate: reply(450, '4.7.1', 'too much mail from your network while the server is busy, try again later'),
  blockedSender: reply(554, '5.7.1', 'access denied: your network is blocked by this server\'s operator'),
  intakePaused: reply(452, '4.3.1', 'queue intake paused: insufficient system resources, try again later'),
  scanBusy: reply(451, '4.3.2', 'too much mail being scanned, try again later'),
  signingFailed: reply(451, '4.7.5', 'message could not be DKIM-signed now, try again later'),
  proxyLoop: reply(554, '5.4.6', 'routing loop: this connection comes from the proxy itself'),
  notRedirected: reply(554, '5.4.6', 'no original destination: this connection was not redirected to the proxy'),
  /** Recipient validation at RCPT (mta/ingress/ingress-recipients.ts): unknown here, so never accepted and bounced later. */
  unknownRecipient: reply(550, '5.1.1', 'recipient address rejected: user unknown'),
  /** The recipient could not be checked now (probe failed, list unreadable): `unavailable: tempfail-450` … */
  recipientUnverified: reply(450, '4.1.1', 'recipient address rejected: address verification unavailable, try again later'),
  /** … or `unavailable: tempfail-451`. */
  recipientCheckFailed: reply(451, '4.3.0', 'recipient address could not be checked now, try again later'),
} as const;

/** The message is durable in the queue (RFC 5321 4.2.5: the 250 is sent only then). */
export const queued = (queueId: string): SmtpReply => reply(250, '2.0.0', `Ok: queued as ${queueId}`);

/** A message a peer transferred that is already queued here under its id (a transfer repeated after a lost 250). */
export const alreadyQueued = (queueId: string): SmtpReply => reply(250, '2.0.0', `Ok: already queued as ${queueId}`);

/** A proxied message held in quarantine: its client learns that no destination has seen it. */
export const heldInQuarantine = (queueId: string): SmtpReply => reply(250, '2.0.0', `Ok: held in quarantine as ${queueId}`);

/** The transparent proxy: a client outside the trusted and tenants' networks. */
export const proxyNotAllowed = (client: string): SmtpReply => reply(554, '5.7.1', `${client} may not use this proxy`);

/** The transparent proxy: a connection whose original destination is one of Ichidan's own listeners. */
export const destinationIsSelf = (destination: string): SmtpReply => reply(554, '5.4.6', `routing loop: ${destination} is this MTA`);

/** Structure past Ichidan's own limits (limits.maxHeaderSize …): a media error, RFC 3463 X.6.0. */
export const structureRefused = (why: string): SmtpReply => reply(550, '5.6.0', `message refused: ${why}`);

/** An engine found a virus (its signature's name, made printable by the caller). */
export const virusFound = (signature: string): SmtpReply => reply(550, '5.7.1', `message refused: virus found (${signature})`);

/** A policy or sender-authentication rule refused the message (the rule's own words). */
export const contentRefused = (why: string): SmtpReply => reply(550, '5.7.1', `message refused: ${why}`);

/** An engine could not judge the message (a limit of its own, MIME it cannot parse): a security refusal. */
export const notFullyScanned = (why: string): SmtpReply => reply(550, '5.7.1', `message refused: content could not be fully scanned (${why})`);

/** A tenant's recipient on its suppression list (queue/queue-suppression.ts says why and since when). */
export const recipientSuppressed = (address: string, why: string): SmtpReply => reply(550, '5.1.1', `<${address}>: recipient suppressed ${why}`);

/** A load balancer's connection whose PROXY protocol header is missing, late or malformed (the connection is closed). */
export const proxyHeaderRefused = (): SmtpReply => reply(421, '4.7.0', 'invalid or missing PROXY protocol header, closing connection');

/** A PROXY header from a client that may not send one (listeners[].proxyProtocol.from). */
export const proxyHeaderNotAllowed = (client: string): SmtpReply => reply(554, '5.7.1', `PROXY protocol header not accepted from ${client}`);

/** A reply as smtp-server's DATA callback takes a success message: the text after the code. */
export const replyText = (r: SmtpReply): string => `${r.enhanced} ${r.text}`;

/** A reply as one line on the wire, without its CRLF (a refusal written at the socket, before smtp-server is involved). */
export const replyLine = (r: SmtpReply): string => `${r.code} ${replyText(r)}`;

export type SmtpError = Error & { responseCode: number };

export function toSmtpError(r: SmtpReply): SmtpError {
  const err = new Error(replyText(r)) as SmtpError;
  err.responseCode = r.code;
  return err;
}
