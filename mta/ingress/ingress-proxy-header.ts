/*
 * The PROXY protocol header a TCP load balancer (HAProxy, an AWS NLB, …) puts in front of the
 * connection it opens for a client, so the listener learns the client's own address.
 *
 * Takes: the first bytes of a connection from a configured load balancer. Gives: `parseProxyHeader`,
 *   a pure function that says whether the bytes so far are a whole header (its length and the
 *   client's address and port), need more bytes, or are not a header Ichidan accepts (and why);
 *   `readProxyHeader`, which reads one header off a socket within a deadline and puts back what
 *   follows it.
 * Trusts: nothing in the header beyond its syntax; whether the peer may send one at all is the
 *   listener's `proxyProtocol.from` (ingress-proxy-door.ts).
 * Spec: the PROXY protocol, versions 1 (one text line, at most 107 bytes with its CRLF) and 2 (a
 *   12-byte signature, a 4-byte head and at most 65535 bytes of addresses and TLVs; TLVs are
 *   skipped). A LOCAL command (v2) or the UNKNOWN family (v1) is the balancer's own connection (a
 *   health check): the socket's addresses stand. A header over `MAX_HEADER` bytes, a v2 header for
 *   a datagram or unix socket, or anything but a header is refused.
 */
import { isIPv4, isIPv6, type Socket } from 'node:net';

export type ProxyVersion = 'v1' | 'v2' | 'any';

export type ProxyHeader =
  | { kind: 'more' }
  | { kind: 'bad'; why: string }
  /** `source` null: the balancer's own connection (LOCAL, UNKNOWN), the socket's addresses stand. */
  | { kind: 'header'; version: 1 | 2; length: number; source: { address: string; port: number } | null };

/** v2's 12-byte signature; it begins with CRLF and ends with "QUIT\n", so a server that does not expect it hangs up. */
const V2_SIGNATURE = Buffer.from([0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a]);
const V1_PREFIX = Buffer.from('PROXY ');
/** v1's longest line, CRLF included (the protocol's own limit). */
const V1_MAX = 107;
/** The most a v2 header may take here: addresses and a few TLVs (HAProxy's unique id, SSL facts) fit with room to spare. */
export const MAX_HEADER = 4096;

const PORT = /^(0|[1-9]\d{0,4})$/;

/** Whether a chunk begins as a v2 header does (its first six bytes, "\r\n\r\n\0\r", are no SMTP command). */
export function isV2Start(chunk: Buffer): boolean {
  return chunk.length >= 6 && chunk.subarray(0, 6).equals(V2_SIGNATURE.subarray(0, 6));
}

/** Whether `data` (the first bytes of the connection) begins with a header of an accepted version. */
export function parseProxyHeader(data: Buffer, version: ProxyVersion = 'any'): ProxyHeader {
  const couldBe = (prefix: Buffer) => data.subarray(0, prefix.length).equals(prefix.subarray(0, Math.min(prefix.length, data.length)));
  if (data.length === 0) return { kind: 'more' };
  if (couldBe(V2_SIGNATURE)) {
    if (version === 'v1') return { kind: 'bad', why: 'a PROXY v2 header where v1 is configured' };
    return data.length < 16 ? { kind: 'more' } : parseV2(data);
  }
  if (couldBe(V1_PREFIX)) {
    if (version === 'v2') return { kind: 'bad', why: 'a PROXY v1 header where v2 is configured' };
    return data.length < V1_PREFIX.length ? { kind: 'more' } : parseV1(data);
  }
  return { kind: 'bad', why: 'no PROXY protocol header' };
}

function parseV1(data: Buffer): ProxyHeader {
  const end = data.indexOf('\r\n');
  if (end < 0) return data.length >= V1_MAX ? { kind: 'bad', why: `PROXY v1 line longer than ${V1_MAX} bytes` } : { kind: 'more' };
  const length = end + 2;
  if (length > V1_MAX) return { kind: 'bad', why: `PROXY v1 line longer than ${V1_MAX} bytes` };
  const words = data.subarray(0, end).toString('latin1').split(' ');
  if (words[1] === 'UNKNOWN') return { kind: 'header', version: 1, length, source: null };
  if (words.length !== 6) return { kind: 'bad', why: 'PROXY v1 line: not "PROXY TCP4|TCP6 source destination sport dport"' };
  const [, family, source, destination, sport, dport] = words;
  const isFamily = family === 'TCP4' ? isIPv4 : family === 'TCP6' ? isIPv6 : null;
  if (!isFamily) return { kind: 'bad', why: `PROXY v1 line: unknown protocol "${printable(family)}"` };
  if (!isFamily(source) || !isFamily(destination)) return { kind: 'bad', why: `PROXY v1 line: not ${family} addresses` };
  if (!PORT.test(sport) || !PORT.test(dport) || Number(sport) > 65535 || Number(dport) > 65535) return { kind: 'bad', why: 'PROXY v1 line: bad port' };
  return { kind: 'header', version: 1, length, source: { address: source.toLowerCase(), port: Number(sport) } };
}

function parseV2(data: Buffer): ProxyHeader {
  const verCmd = data[12];
  if (verCmd >> 4 !== 2) return { kind: 'bad', why: `PROXY v2 header: version ${verCmd >> 4}` };
  const command = verCmd & 0x0f;
  if (command > 1) return { kind: 'bad', why: `PROXY v2 header: unknown command ${command}` };
  const length = 16 + data.readUInt16BE(14);
  if (length > MAX_HEADER) return { kind: 'bad', why: `PROXY v2 header of ${length} bytes (at most ${MAX_HEADER})` };
  if (data.length < length) return { kind: 'more' };
  // LOCAL: the balancer speaks for itself (a health check); whatever address block follows is ignored.
  if (command === 0) return { kind: 'header', version: 2, length, source: null };
  const family = data[13] >> 4;
  const transport = data[13] & 0x0f;
  if (family === 0) return { kind: 'header', version: 2, length, source: null };
  if (transport !== 1) return { kind: 'bad', why: 'PROXY v2 header: not a stream (TCP) connection' };
  const body = data.subarray(16, length);
  if (family === 1 && body.length >= 12) {
    return { kind: 'header', version: 2, length, source: { address: [...body.subarray(0, 4)].join('.'), port: body.readUInt16BE(8) } };
  }
  if (family === 2 && body.length >= 36) {
    const groups: string[] = [];
    for (let i = 0; i < 16; i += 2) groups.push(body.readUInt16BE(i).toString(16));
    return { kind: 'header', version: 2, length, source: { address: compactIPv6(groups), port: body.readUInt16BE(32) } };
  }
  if (family === 1 || family === 2) return { kind: 'bad', why: 'PROXY v2 header: address block too short' };
  return { kind: 'bad', why: `PROXY v2 header: address family ${family} (only TCP over IPv4 or IPv6)` };
}

/** RFC 5952's form: the longest run (of two or more) of zero groups as "::". */
function compactIPv6(groups: string[]): string {
  let best = -1;
  let bestLen = 1;
  for (let i = 0; i < 8;) {
    if (groups[i] !== '0') { i++; continue; }
    let j = i;
    while (j < 8 && groups[j] === '0') j++;
    if (j - i > bestLen) { best = i; bestLen = j - i; }
    i = j;
  }
  if (best < 0) return groups.join(':');
  return `${groups.slice(0, best).join(':')}::${groups.slice(best + bestLen).join(':')}`;
}

const printable = (s: string) => s.replace(/[^\x21-\x7e]/g, '?').slice(0, 16);

export type HeaderOutcome =
  | { ok: true; header: Extract<ProxyHeader, { kind: 'header' }> }
  /** `empty`: the peer closed without sending a byte (a balancer's plain TCP health check). */
  | { ok: false; why: string; empty?: boolean };

/**
 * Reads one header off `socket` within `timeoutMs`; the bytes after it are put back for the SMTP
 * session. The socket is left open either way: the caller answers and closes it.
 */
export function readProxyHeader(socket: Socket, version: ProxyVersion, timeoutMs: number): Promise<HeaderOutcome> {
  return new Promise((resolve) => {
    let data = Buffer.alloc(0);
    const finish = (outcome: HeaderOutcome) => {
      clearTimeout(timer);
      socket.removeListener('readable', read);
      socket.removeListener('end', ended);
      socket.removeListener('close', ended);
      socket.removeListener('error', ended);
      resolve(outcome);
    };
    const ended = () => finish(data.length === 0
      ? { ok: false, why: 'the connection closed before sending anything', empty: true }
      : { ok: false, why: 'the connection closed before its PROXY header was complete' });
    const read = () => {
      let chunk: Buffer | null;
      while ((chunk = socket.read() as Buffer | null) !== null) {
        data = Buffer.concat([data, chunk]);
        const parsed = parseProxyHeader(data, version);
        if (parsed.kind === 'more') {
          if (data.length > MAX_HEADER) return finish({ ok: false, why: `more than ${MAX_HEADER} bytes without a whole PROXY header` });
          continue;
        }
        if (parsed.kind === 'bad') return finish({ ok: false, why: parsed.why });
        const rest = data.subarray(parsed.length);
        if (rest.length > 0) socket.unshift(rest);
        return finish({ ok: true, header: parsed });
      }
    };
    const timer = setTimeout(() => finish({ ok: false, why: `no whole PROXY header within ${timeoutMs} ms` }), timeoutMs);
    timer.unref();
    socket.on('readable', read);
    socket.once('end', ended);
    socket.once('close', ended);
    socket.once('error', ended);
    read();
  });
}
