/*
 * One DNS query in, one response out: what the embedded responder says for the hosted domains,
 * from raw bytes to raw bytes, without ever throwing on what a peer sent.
 *
 * Takes: a query's bytes, the asking resolver's address, the transport (UDP answers are limited
 * to 512 bytes, or the EDNS payload size offered up to 1232), the zones (admission.dns.domains,
 * default every tenant's plain domains), the TTL (admission.dns.ttl), and from the responder the
 * steering of an MX answer (admission-steer.ts), the hosts' names and addresses (with the pairing
 * address a resolver is handed, admission-pairing.ts).
 * Gives: the response's bytes (null: nothing can be answered, e.g. fewer than 12 bytes, or a
 * response rather than a query), with the mode and mechanism it is counted under.
 *
 *   MX at a zone's apex      the steered hosts, their A/AAAA in the additional section; SERVFAIL
 *                            when steering leaves no usable host
 *   SOA, NS at the apex      one record each (the SOA's minimum and TTL are the answer TTL, so
 *                            negative answers are cached no longer than positive ones)
 *   A/AAAA of a host handed out                 its address (or the resolver's pairing address)
 *   another type at an existing name            NODATA (NOERROR, the SOA in the authority section)
 *   a name in a zone that does not exist        NXDOMAIN (the SOA in the authority section)
 *   a name outside the zones, or class not IN   REFUSED (not authoritative)
 *   undecodable, not exactly one question       FORMERR;   opcode other than QUERY: NOTIMP
 *   EDNS version other than 0                   BADVERS (RFC 6891 6.1.3)
 * Answers carry the AA bit; an oversized UDP answer first loses its additional section, then is
 * sent empty with TC set, so the resolver asks again over TCP (RFC 1035 4.2.1, RFC 2181 9).
 * RFCs: 1035, 2181, 2308 (negative answers), 6891 (EDNS), 5321 5.1 (MX).
 */
import { isIP } from 'node:net';
import dnsPacket, { type Answer, type Packet } from 'dns-packet';
import type { SteerMode, Steering } from './admission-steer.js';

/** What chose the answer; `dropped`: nothing was sent (too short for a header, or a response, not a query). */
export type DnsMechanism = Steering['mechanism'] | 'host' | 'zone' | 'nodata' | 'nxdomain' | 'refused' | 'formerr' | 'notimp' | 'badvers' | 'ratelimited' | 'dropped';

export interface DnsZoneView {
  /** Plain domains, lower case, without the trailing dot. */
  zones: readonly string[];
  /** Seconds. */
  ttl: number;
  /** The SOA's MNAME and the NS record's target. */
  nameserver: string;
  serial: number;
  /** The current mode (for counting answers that are not steered). */
  mode(): SteerMode;
  /** The steered answer for an MX question from `resolver` (counted as an MX query by the caller). */
  steer(resolver: string): Steering;
  /** The addresses of a host name handed out (lower case), as `resolver` is given them; null when no such host. */
  addresses(name: string, resolver: string): string[] | null;
}

export interface DnsResult {
  response: Buffer | null;
  mode: SteerMode;
  mechanism: DnsMechanism;
  /** Set for an MX question at a zone's apex. */
  steering?: Steering;
}

const RCODE = { NOERROR: 0, FORMERR: 1, SERVFAIL: 2, NXDOMAIN: 3, NOTIMP: 4, REFUSED: 5 } as const;
const OPCODE_MASK = 0xf << 11;
const UDP_PLAIN = 512;
/** The EDNS payload size offered and honoured at most (the DNS flag day 2020 figure). */
export const UDP_EDNS_MAX = 1232;

type Question = NonNullable<Packet['questions']>[number];

/** Decodes and answers one query; never throws. */
export function answerQuery(bytes: Buffer, resolver: string, transport: 'udp' | 'tcp', view: DnsZoneView): DnsResult {
  const mode = safeMode(view);
  if (bytes.length < 12 || (bytes[2] & 0x80) !== 0) return { response: null, mode, mechanism: 'dropped' };
  let query: Packet;
  try {
    query = dnsPacket.decode(bytes);
  } catch {
    return { response: encodeHeaderOnly(bytes, RCODE.FORMERR), mode, mechanism: 'formerr' };
  }
  try {
    return respond(query, resolver, transport, view, mode);
  } catch {
    // A query that decodes but cannot be answered (a name that will not encode back, a steering failure).
    return { response: encodeHeaderOnly(bytes, RCODE.SERVFAIL), mode, mechanism: 'servfail' };
  }
}

function safeMode(view: DnsZoneView): SteerMode {
  try {
    return view.mode();
  } catch {
    return 'normal';
  }
}

/** An empty answer with TC set, the question echoed: "ask again over TCP" (a rate-limited slip); null when the query does not decode. */
export function truncatedReply(bytes: Buffer): Buffer | null {
  try {
    if (bytes.length < 12 || (bytes[2] & 0x80) !== 0) return null;
    const query = dnsPacket.decode(bytes);
    const flags = ((query.flags ?? 0) & (OPCODE_MASK | dnsPacket.RECURSION_DESIRED)) | dnsPacket.TRUNCATED_RESPONSE;
    return dnsPacket.encode({ type: 'response', id: query.id, flags, questions: (query.questions ?? []).slice(0, 1) });
  } catch {
    return null;
  }
}

/** A response carrying only the query's id and opcode, RD and the rcode: for what cannot be decoded. */
function encodeHeaderOnly(bytes: Buffer, rcode: number): Buffer {
  const out = Buffer.alloc(12);
  bytes.copy(out, 0, 0, 2);
  const flags = bytes.readUInt16BE(2);
  out.writeUInt16BE(0x8000 | (flags & (OPCODE_MASK | dnsPacket.RECURSION_DESIRED)) | rcode, 2);
  return out;
}

function respond(query: Packet, resolver: string, transport: 'udp' | 'tcp', view: DnsZoneView, mode: SteerMode): DnsResult {
  const opt = (query.additionals ?? []).find((a) => a.type === 'OPT') as { udpPayloadSize?: number; ednsVersion?: number } | undefined;
  const limit = transport === 'tcp' ? 65535 : opt ? Math.min(Math.max(opt.udpPayloadSize ?? UDP_PLAIN, UDP_PLAIN), UDP_EDNS_MAX) : UDP_PLAIN;
  const questions = query.questions ?? [];
  const reply = (rcode: number, mechanism: DnsMechanism, records: Partial<Record<'answers' | 'authorities' | 'additionals', Answer[]>> = {}, authoritative = true, extendedRcode = 0): DnsResult => {
    const packet: Packet = {
      type: 'response',
      id: query.id,
      flags: ((query.flags ?? 0) & (OPCODE_MASK | dnsPacket.RECURSION_DESIRED)) | (authoritative ? dnsPacket.AUTHORITATIVE_ANSWER : 0) | rcode,
      questions: questions.length === 1 ? questions : [],
      answers: records.answers ?? [],
      authorities: records.authorities ?? [],
      additionals: [...(records.additionals ?? []), ...(opt ? [{ type: 'OPT', name: '.', udpPayloadSize: UDP_EDNS_MAX, extendedRcode, ednsVersion: 0, flags: 0, flag_do: false, options: [] } as Answer] : [])],
    };
    return { response: fit(packet, limit, !!opt), mode, mechanism };
  };

  if (((query.flags ?? 0) & OPCODE_MASK) !== 0) return reply(RCODE.NOTIMP, 'notimp', {}, false);
  // BADVERS is 16: its upper eight bits go in the OPT record, the lower four (0) in the header.
  if ((opt?.ednsVersion ?? 0) !== 0) return reply(RCODE.NOERROR, 'badvers', {}, false, 1);
  if (questions.length !== 1) return reply(RCODE.FORMERR, 'formerr', {}, false);
  const q = questions[0];
  const name = q.name.toLowerCase().replace(/\.$/, '');
  const zone = zoneOf(name, view.zones);
  if (!zone || (q.class !== 'IN' && (q.class as string) !== 'ANY')) return reply(RCODE.REFUSED, 'refused', {}, false);
  const soa = soaRecord(zone, view);
  const negative = (rcode: number, mechanism: DnsMechanism) => reply(rcode, mechanism, { authorities: [soa] });

  if (name === zone) {
    if (q.type === 'MX') {
      const steering = view.steer(resolver);
      if (steering.mechanism === 'servfail') return { ...reply(RCODE.SERVFAIL, 'servfail', {}, false), mode: steering.mode, steering };
      const answers: Answer[] = steering.hosts.map((h) => ({ type: 'MX', name: q.name, ttl: view.ttl, class: 'IN', data: { preference: h.preference, exchange: h.name } }));
      const additionals = unique(steering.hosts.map((h) => h.name)).flatMap((host) => addressRecords(host, view.addresses(host.toLowerCase(), resolver) ?? [], view.ttl, 'ANY'));
      return { ...reply(RCODE.NOERROR, steering.mechanism, { answers, additionals }), mode: steering.mode, steering };
    }
    if (q.type === 'SOA' || (q.type as string) === 'ANY') return reply(RCODE.NOERROR, 'zone', { answers: [{ ...soa, name: q.name }] });
    if (q.type === 'NS') return reply(RCODE.NOERROR, 'zone', { answers: [{ type: 'NS', name: q.name, ttl: view.ttl, class: 'IN', data: view.nameserver }] });
  }
  const addresses = view.addresses(name, resolver);
  if (addresses !== null && (q.type === 'A' || q.type === 'AAAA')) {
    const answers = addressRecords(q.name, addresses, view.ttl, q.type);
    if (answers.length > 0) return reply(RCODE.NOERROR, 'host', { answers });
  }
  if (name === zone || addresses !== null || view.nameserver.toLowerCase() === name) return negative(RCODE.NOERROR, 'nodata');
  return negative(RCODE.NXDOMAIN, 'nxdomain');
}

/** The longest zone `name` is in (or null). */
function zoneOf(name: string, zones: readonly string[]): string | null {
  let best: string | null = null;
  for (const z of zones) {
    if ((name === z || name.endsWith(`.${z}`)) && (best === null || z.length > best.length)) best = z;
  }
  return best;
}

function soaRecord(zone: string, view: DnsZoneView): Answer {
  return {
    type: 'SOA', name: zone, ttl: view.ttl, class: 'IN',
    data: { mname: view.nameserver, rname: `hostmaster.${zone}`, serial: view.serial, refresh: 3600, retry: 600, expire: 86400, minimum: view.ttl },
  };
}

function addressRecords(owner: string, addresses: string[], ttl: number, type: 'A' | 'AAAA' | 'ANY'): Answer[] {
  return addresses.flatMap((a): Answer[] => {
    const family = isIP(a);
    if (family === 4 && type !== 'AAAA') return [{ type: 'A', name: owner, ttl, class: 'IN', data: a }];
    if (family === 6 && type !== 'A') return [{ type: 'AAAA', name: owner, ttl, class: 'IN', data: a }];
    return [];
  });
}

function unique(names: string[]): string[] {
  const seen = new Set<string>();
  return names.filter((n) => !seen.has(n.toLowerCase()) && seen.add(n.toLowerCase()));
}

/** The packet's bytes within `limit`: without the additional section if need be, else empty with TC. */
function fit(packet: Packet, limit: number, edns: boolean): Buffer {
  let bytes = dnsPacket.encode(packet);
  if (bytes.length <= limit) return bytes;
  const opt = (packet.additionals ?? []).filter((a) => a.type === 'OPT');
  bytes = dnsPacket.encode({ ...packet, additionals: opt });
  if (bytes.length <= limit) return bytes;
  return dnsPacket.encode({ ...packet, flags: (packet.flags ?? 0) | dnsPacket.TRUNCATED_RESPONSE, answers: [], authorities: [], additionals: edns ? opt : [] });
}

