/*
 * The command lines a proxy session says to the destination for one relayed step. The client's
 * ESMTP parameters on MAIL FROM and RCPT TO are passed on only where the destination offered the
 * extension they belong to (RFC 1870 SIZE, RFC 6152 8BITMIME, RFC 6531 SMTPUTF8, RFC 3461 DSN);
 * the others are dropped, not refused, so that the client's mail still goes. A step's lines go in
 * the order RFC 2920 lets a client group them: RSET, MAIL FROM, RCPT TO, DATA.
 * Takes: the client's parameter words as one string, the destination's EHLO extensions, what a
 * step must say. Gives: the parameters kept, the command lines, an address's domain. Pure: no
 * network, no state.
 */

/** Which extension each parameter the proxy passes on needs the destination to have offered. */
const NEEDS: Record<string, string> = { SIZE: 'SIZE', BODY: '8BITMIME', SMTPUTF8: 'SMTPUTF8', RET: 'DSN', ENVID: 'DSN', NOTIFY: 'DSN', ORCPT: 'DSN' };

/** The ESMTP parameters a destination understands, by the extensions it offered (others are dropped, not refused). */
export function keepParams(params: string, extensions: Map<string, string>): string {
  return params.split(/\s+/).filter((w) => {
    const key = w.split('=')[0].toUpperCase();
    return w !== '' && NEEDS[key] !== undefined && extensions.has(NEEDS[key]);
  }).join(' ');
}

/** An address's domain, lower-cased: what names a recipient's site and TLS rule. */
export function domainOf(address: string): string {
  return address.slice(address.lastIndexOf('@') + 1).toLowerCase();
}

/** `command` (say `RCPT TO:<a@b>`) with the parameters the destination understands after it. */
export function commandLine(command: string, params: string, extensions: Map<string, string>): string {
  const kept = keepParams(params, extensions);
  return kept ? `${command} ${kept}` : command;
}

/** What one relayed step says: an RSET first, the MAIL FROM line (null: it went already), the client's command (null: none), DATA after it. */
export interface RelayStep {
  reset: boolean;
  mail: string | null;
  line: string | null;
  /** RCPTs the client sent right after `line`, relayed in its group. */
  ahead?: string[];
  data: boolean;
}

/** The step's lines in the order they are said, and where MAIL FROM stands among them (-1: not said), so that its transaction is known when it goes. */
export function relayLines(step: RelayStep): { lines: string[]; mailAt: number } {
  const lines: string[] = [];
  if (step.reset) lines.push('RSET');
  const mailAt = step.mail === null ? -1 : lines.length;
  if (step.mail !== null) lines.push(step.mail);
  if (step.line !== null) lines.push(step.line, ...(step.ahead ?? []));
  if (step.data) lines.push('DATA');
  return { lines, mailAt };
}
