/*
 * Who may drive the admin API: requests a web page cannot forge.
 *
 * Takes: an admin request's method and headers, and the Host values its listener answers to
 * ("localhost" on the unix socket, as HTTP clients send there; the bound "address:port" on the
 * TCP port). Gives: null, or the refusal (status and reason):
 * - 421 Misdirected Request for any other Host: a DNS-rebinding page reaches the loopback port
 *   under its own name, which is never the listener's address;
 * - 415 Unsupported Media Type for a POST, PUT, PATCH or DELETE whose body is not declared
 *   `application/json`: a cross-site form or a "simple" fetch can only send form or text types,
 *   so a page in the operator's browser cannot change anything (CSRF).
 * The bearer token (admin.token, required with admin.port) is checked beside these, not instead.
 * RFC 9110 sections 7.2 (Host), 15.5.16 (415), 15.5.20 (421).
 */
import type { IncomingHttpHeaders } from 'node:http';

const STATE_CHANGING = new Set(['POST', 'PUT', 'PATCH', 'DELETE']);

export interface AdminRefusal {
  status: number;
  error: string;
}

/** The Host value of a TCP listener bound to `address`:`port`. */
export function tcpHost(address: string, port: number): string {
  return address.includes(':') ? `[${address}]:${port}` : `${address}:${port}`;
}

export function refuseRequest(method: string, headers: IncomingHttpHeaders, hosts: readonly string[]): AdminRefusal | null {
  const host = (headers.host ?? '').toLowerCase();
  if (!hosts.includes(host)) return { status: 421, error: `this API answers to Host ${hosts.join(' or ')} only` };
  if (STATE_CHANGING.has(method)) {
    const type = (headers['content-type'] ?? '').split(';')[0].trim().toLowerCase();
    if (type !== 'application/json') return { status: 415, error: 'a request that changes something must have Content-Type: application/json' };
  }
  return null;
}
