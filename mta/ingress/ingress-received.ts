/*
 * The Received header Ichidan adds (RFC 5321 4.4, protocol names from RFC 3848), kept in the
 * queue record and streamed in front of the spool file at delivery: the file is never rewritten.
 */
import type { SMTPServerSession } from 'smtp-server';

export interface ReceivedInput {
  session: SMTPServerSession;
  hostname: string;
  queueId: string;
  listener: string;
  recipient: string | null;
  now: Date;
}

function rfc5322Date(d: Date): string {
  return d.toUTCString().replace('GMT', '+0000');
}

/** Strips what could break a header line out of client-supplied text. */
function clean(s: string): string {
  return s.replace(/[\x00-\x1f\x7f()\\]/g, '').slice(0, 255);
}

export function buildReceived(input: ReceivedInput): string {
  const { session } = input;
  const helo = clean(session.hostNameAppearsAs || 'unknown');
  const rdns = session.clientHostname && !session.clientHostname.startsWith('[') ? clean(session.clientHostname) : 'unknown';
  const ip = session.remoteAddress.includes(':') ? `IPv6:${session.remoteAddress}` : session.remoteAddress;
  const tls = session.tlsOptions ? `\r\n\t(using ${clean(session.tlsOptions.version ?? 'TLS')} with cipher ${clean(session.tlsOptions.name)})` : '';
  const proto = session.transmissionType || 'ESMTP';
  const forClause = input.recipient ? `\r\n\tfor <${input.recipient}>` : '';
  return `Received: from ${helo} (${rdns} [${ip}])${tls}\r\n\tby ${input.hostname} (Ichidan) with ${proto} id ${input.queueId}${forClause};\r\n\t${rfc5322Date(input.now)}\r\n`;
}
