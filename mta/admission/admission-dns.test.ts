/*
 * The DNS responder against a real client (dig, over UDP and TCP) and against raw bytes: the
 * answers for the hosted zone, the steering by level and resolver standing, truncation, pairing
 * addresses, and malformed packets that must never take the responder down.
 */
import { createSocket } from 'node:dgram';
import { connect } from 'node:net';
import dnsPacket from 'dns-packet';
import pino from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { dig, dnsPeersSupport } from '../../test/helpers/dns-peers.js';
import { parseConfig } from '../mta-config.js';
import type { ConfigInput } from '../mta-config.js';
import { DnsResponder, TCP_IDLE_MS, type ResolverStandings } from './admission-dns.js';
import { BURST } from './admission-dns-ratelimit.js';
import type { Level, Standing } from './admission-steer.js';

const support = dnsPeersSupport(['dig']);
const log = pino({ level: 'silent' });

const PRIMARY = { name: 'mx1.example.test', address: '192.0.2.10' };
const OVERFLOW = { name: 'mxc.example.test', address: '192.0.2.30' };

function config(dns: Record<string, unknown> = {}, extra: Partial<ConfigInput> = {}) {
  return parseConfig({
    hostname: 'ns.ichidan.test',
    dataDir: '/tmp/unused',
    listeners: [{ name: 'mx', role: 'mx', address: '127.0.0.1', port: 0 }],
    tenants: { t: { domains: ['example.test', '.sub.example.test'] } },
    admission: { dns: { enabled: true, address: '127.0.0.1', port: 0, primary: [PRIMARY], overflow: [OVERFLOW], ttl: '30s', ...dns } },
    ...extra,
  } as ConfigInput, 'test');
}

interface World {
  dns: DnsResponder;
  standings: Map<string, Standing>;
  pairs: Array<[string, string]>;
  setLevel(l: Level): void;
}

const open: DnsResponder[] = [];
afterEach(async () => { await Promise.all(open.splice(0).map((d) => d.close())); });

async function world(dns: Record<string, unknown> = {}, extra: Partial<ConfigInput> = {}): Promise<World> {
  const standings = new Map<string, Standing>();
  const pairs: Array<[string, string]> = [];
  let level: Level = 'normal';
  const senders: ResolverStandings = {
    resolverStanding: (r) => standings.get(r) ?? 'unknown',
    pairResolver: (r, c) => { pairs.push([r, c]); },
  };
  const responder = await DnsResponder.start({ config: config(dns, extra), senders, level: () => level, log });
  open.push(responder);
  return { dns: responder, standings, pairs, setLevel: (l) => { level = l; } };
}

/** One raw UDP datagram to the responder; its answer, or null when none came within `waitMs`. */
function udpRaw(port: number, bytes: Buffer, waitMs = 500): Promise<Buffer | null> {
  return new Promise((resolve) => {
    const s = createSocket('udp4');
    const timer = setTimeout(() => { s.close(); resolve(null); }, waitMs);
    s.on('message', (msg) => { clearTimeout(timer); s.close(); resolve(msg); });
    s.send(bytes, port, '127.0.0.1');
  });
}

/** Raw bytes over one TCP connection; everything the responder sent back until it closed or `waitMs` passed. */
function tcpRaw(port: number, bytes: Buffer, waitMs = 500): Promise<{ data: Buffer; closed: boolean }> {
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    const s = connect(port, '127.0.0.1', () => s.write(bytes));
    const done = (closed: boolean) => { clearTimeout(timer); s.destroy(); resolve({ data: Buffer.concat(chunks), closed }); };
    const timer = setTimeout(() => done(false), waitMs);
    s.on('data', (c) => chunks.push(c));
    s.on('close', () => done(true));
    s.on('error', () => undefined);
  });
}

/** dns-packet decodes the rcode too; its types do not say so. */
function decode(bytes: Buffer) {
  return dnsPacket.decode(bytes) as ReturnType<typeof dnsPacket.decode> & { rcode: string; flag_tc: boolean };
}

function framed(...messages: Buffer[]): Buffer {
  return Buffer.concat(messages.flatMap((m) => { const len = Buffer.alloc(2); len.writeUInt16BE(m.length); return [len, m]; }));
}

function query(id: number, name: string, type: 'MX' | 'A' | 'SOA' = 'MX'): Buffer {
  return dnsPacket.encode({ type: 'query', id, flags: 0, questions: [{ type, name, class: 'IN' }] });
}

describe.skipIf(!support.ok)(`DNS responder with dig${support.ok ? '' : ` (skipped: ${support.reason})`}`, () => {
  it('answers MX at the apex with the primary host, its address in the additional section, authoritatively, over UDP and TCP', async () => {
    const { dns } = await world();
    for (const transport of ['+notcp', '+tcp']) {
      const r = await dig('127.0.0.1', dns.address.port, [transport, 'example.test', 'MX']);
      expect(r.status).toBe('NOERROR');
      expect(r.flags).toContain('aa');
      expect(r.answers).toEqual([['example.test.', '30', 'MX', '10 mx1.example.test.']]);
      expect(r.additional).toContainEqual(['mx1.example.test.', '30', 'A', '192.0.2.10']);
    }
    expect(dns.answers()).toContainEqual({ mode: 'normal', mechanism: 'primary', count: 2 });
  });

  it('answers A of a host it hands out, SOA and NS at the apex, NODATA and NXDOMAIN with the SOA, REFUSED outside its zones', async () => {
    const { dns } = await world();
    const port = dns.address.port;
    const a = await dig('127.0.0.1', port, ['MX1.example.test', 'A']);
    expect([a.status, a.answers]).toEqual(['NOERROR', [['MX1.example.test.', '30', 'A', '192.0.2.10']]]);
    const soa = await dig('127.0.0.1', port, ['+tcp', 'example.test', 'SOA']);
    expect(soa.answers[0].slice(0, 3)).toEqual(['example.test.', '30', 'SOA']);
    expect(soa.answers[0][3]).toMatch(/^ns\.ichidan\.test\. hostmaster\.example\.test\. \d+ 3600 600 86400 30$/);
    const ns = await dig('127.0.0.1', port, ['example.test', 'NS']);
    expect(ns.answers).toEqual([['example.test.', '30', 'NS', 'ns.ichidan.test.']]);
    const nodata = await dig('127.0.0.1', port, ['example.test', 'TXT']);
    expect([nodata.status, nodata.answers, nodata.authority[0]?.[2]]).toEqual(['NOERROR', [], 'SOA']);
    expect(nodata.flags).toContain('aa');
    const hostNodata = await dig('127.0.0.1', port, ['mx1.example.test', 'AAAA']);
    expect([hostNodata.status, hostNodata.answers]).toEqual(['NOERROR', []]);
    const nx = await dig('127.0.0.1', port, ['+tcp', 'nope.example.test', 'A']);
    expect([nx.status, nx.authority[0]?.[2]]).toEqual(['NXDOMAIN', 'SOA']);
    expect(nx.flags).toContain('aa');
    const badvers = await dig('127.0.0.1', port, ['+edns=1', '+noednsnegotiation', 'example.test', 'MX']);
    expect([badvers.status, badvers.answers]).toEqual(['BADVERS', []]);
    const refused = await dig('127.0.0.1', port, ['example.org', 'MX']);
    expect(refused.status).toBe('REFUSED');
    expect(refused.flags).not.toContain('aa');
    // "sub.example.test" came as ".sub.example.test" (its subdomains): not a zone of its own.
    expect((await dig('127.0.0.1', port, ['x.sub.example.test', 'MX'])).status).toBe('NXDOMAIN');
    const counted = Object.fromEntries(dns.answers().map((c) => [c.mechanism, c.count]));
    expect(counted).toEqual({ host: 1, zone: 2, nodata: 2, nxdomain: 2, refused: 1, badvers: 1 });
  });

  it('in high-load mode gives known resolvers the primary host, others the overflow host, and SERVFAIL when there is none', async () => {
    const { dns, standings, setLevel } = await world();
    const port = dns.address.port;
    standings.set('127.0.0.2', 'known');
    standings.set('127.0.0.4', 'blocked');
    setLevel('overload');
    const known = await dig('127.0.0.1', port, ['-b', '127.0.0.2', 'example.test', 'MX']);
    expect(known.answers).toEqual([['example.test.', '30', 'MX', '10 mx1.example.test.']]);
    const unknown = await dig('127.0.0.1', port, ['-b', '127.0.0.3', 'example.test', 'MX']);
    expect(unknown.answers).toEqual([['example.test.', '30', 'MX', '10 mxc.example.test.']]);
    expect(unknown.additional).toContainEqual(['mxc.example.test.', '30', 'A', '192.0.2.30']);
    const blocked = await dig('127.0.0.1', port, ['-b', '127.0.0.4', '+tcp', 'example.test', 'MX']);
    expect(blocked.answers).toEqual([['example.test.', '30', 'MX', '10 mxc.example.test.']]);
    dns.apply(config({ overflow: [] }));
    const none = await dig('127.0.0.1', port, ['-b', '127.0.0.3', 'example.test', 'MX']);
    expect([none.status, none.answers]).toEqual(['SERVFAIL', []]);
    expect((await dig('127.0.0.1', port, ['-b', '127.0.0.2', 'example.test', 'MX'])).status).toBe('NOERROR');
    setLevel('normal');
    expect((await dig('127.0.0.1', port, ['-b', '127.0.0.3', 'example.test', 'MX'])).answers[0][3]).toBe('10 mx1.example.test.');
    expect(dns.answers()).toEqual(expect.arrayContaining([
      { mode: 'high', mechanism: 'known', count: 2 },
      { mode: 'high', mechanism: 'overflow', count: 2 },
      { mode: 'high', mechanism: 'servfail', count: 1 },
      { mode: 'normal', mechanism: 'primary', count: 1 },
    ]));
  });

  it('truncates a UDP answer over 512 bytes without EDNS (TC), and gives it whole over TCP', async () => {
    const primary = Array.from({ length: 30 }, (_, i) => ({ name: `a-rather-long-mail-host-name-${i}.example.test`, address: `192.0.2.${100 + i}` }));
    const { dns } = await world({ primary });
    const port = dns.address.port;
    const udp = await dig('127.0.0.1', port, ['+noedns', '+ignore', 'example.test', 'MX']);
    expect(udp.flags).toEqual(expect.arrayContaining(['tc', 'aa']));
    expect(udp.answers).toEqual([]);
    const tcp = await dig('127.0.0.1', port, ['+tcp', 'example.test', 'MX']);
    expect(tcp.flags).not.toContain('tc');
    expect(tcp.answers).toHaveLength(30);
    expect(tcp.additional.filter((r) => r[2] === 'A')).toHaveLength(30);
  });

  it('listens on IPv6 and answers AAAA for an IPv6 host, in the additional section too', async () => {
    const { dns } = await world({ address: '::1', primary: [{ name: 'mx6.example.test', address: '2001:db8::25' }] });
    for (const transport of ['+notcp', '+tcp']) {
      const mx = await dig('::1', dns.address.port, [transport, 'example.test', 'MX']);
      expect(mx.answers).toEqual([['example.test.', '30', 'MX', '10 mx6.example.test.']]);
      expect(mx.additional).toContainEqual(['mx6.example.test.', '30', 'AAAA', '2001:db8::25']);
    }
    const aaaa = await dig('::1', dns.address.port, ['mx6.example.test', 'AAAA']);
    expect(aaaa.answers).toEqual([['mx6.example.test.', '30', 'AAAA', '2001:db8::25']]);
    expect((await dig('::1', dns.address.port, ['mx6.example.test', 'A'])).answers).toEqual([]);
  });

  it('hands a resolver its pairing address for this node\'s host, and pairs the MTA that connects on it', async () => {
    const { dns, pairs } = await world({ primary: [{ name: 'mx1.example.test', address: '127.0.0.1' }], pairingAddresses: ['127.0.0.41', '127.0.0.42'] });
    const port = dns.address.port;
    const first = await dig('127.0.0.1', port, ['-b', '127.0.0.5', 'mx1.example.test', 'A']);
    const second = await dig('127.0.0.1', port, ['-b', '127.0.0.6', 'mx1.example.test', 'A']);
    const again = await dig('127.0.0.1', port, ['-b', '127.0.0.5', 'example.test', 'MX']);
    const [a1, a2] = [first.answers[0][3], second.answers[0][3]];
    expect(new Set([a1, a2])).toEqual(new Set(['127.0.0.41', '127.0.0.42']));
    expect(again.additional).toContainEqual(['mx1.example.test.', '30', 'A', a1]);
    expect(dns.pairingAddresses('mx')).toEqual(['127.0.0.41', '127.0.0.42']);
    expect(dns.pairingAddresses('other')).toEqual([]);
    dns.connected(a2, '::ffff:198.51.100.25');
    expect(pairs).toEqual([['127.0.0.6', '198.51.100.25']]);
  });
});

describe('DNS responder and malformed input', () => {
  it('answers garbage with FORMERR, drops what is too short or is a response, and keeps serving (UDP)', async () => {
    const { dns } = await world();
    const port = dns.address.port;
    const garbage = Buffer.from('12340100000100000000000077777777ffffffff', 'hex');
    const formerr = await udpRaw(port, garbage);
    expect(formerr).not.toBeNull();
    const decoded = decode(formerr!);
    expect([decoded.id, decoded.type, decoded.rcode]).toEqual([0x1234, 'response', 'FORMERR']);
    // A query cut short in its question, a name pointer to itself, and a query with two questions.
    const cut = query(7, 'example.test').subarray(0, 20);
    expect(decode((await udpRaw(port, cut))!).rcode).toBe('FORMERR');
    const loop = Buffer.concat([Buffer.from('000800000001000000000000', 'hex'), Buffer.from([0xc0, 0x0c, 0, 15, 0, 1])]);
    expect(decode((await udpRaw(port, loop))!).rcode).toBe('FORMERR');
    const two = dnsPacket.encode({ type: 'query', id: 9, questions: [{ type: 'MX', name: 'example.test' }, { type: 'A', name: 'example.test' }] });
    expect(decode((await udpRaw(port, two))!).rcode).toBe('FORMERR');
    const notify = dnsPacket.encode({ type: 'query', id: 10, flags: 4 << 11, questions: [{ type: 'SOA', name: 'example.test' }] });
    expect(decode((await udpRaw(port, notify))!).rcode).toBe('NOTIMP');
    expect(await udpRaw(port, Buffer.from([1, 2, 3]), 300)).toBeNull();
    expect(await udpRaw(port, Buffer.alloc(0), 300)).toBeNull();
    const response = dnsPacket.encode({ type: 'response', id: 11, questions: [{ type: 'MX', name: 'example.test' }] });
    expect(await udpRaw(port, response, 300)).toBeNull();
    const fine = decode((await udpRaw(port, query(12, 'example.test')))!);
    expect([fine.rcode, fine.answers?.length]).toEqual(['NOERROR', 1]);
    expect(dns.answers().find((c) => c.mechanism === 'formerr')?.count).toBe(4);
    expect(dns.answers().find((c) => c.mechanism === 'dropped')?.count).toBe(3);
  });

  it('answers several queries on one TCP connection in order, FORMERR for garbage, and closes on a fragment or when idle', async () => {
    const { dns } = await world();
    const port = dns.address.port;
    const garbage = Buffer.from('4321010000010000000000003f', 'hex');
    const { data } = await tcpRaw(port, framed(query(1, 'example.test'), garbage, query(2, 'mx1.example.test', 'A')));
    const replies: Array<ReturnType<typeof decode>> = [];
    for (let at = 0; at < data.length;) {
      const len = data.readUInt16BE(at);
      replies.push(decode(data.subarray(at + 2, at + 2 + len)));
      at += 2 + len;
    }
    expect(replies.map((r) => [r.id, r.rcode])).toEqual([[1, 'NOERROR'], [0x4321, 'FORMERR'], [2, 'NOERROR']]);
    // A message too short for a header: the connection is closed.
    expect((await tcpRaw(port, framed(Buffer.from([1, 2, 3])))).closed).toBe(true);
    // Half a length-prefixed message, then silence: answered by nothing, closed when idle.
    const started = Date.now();
    const idle = await tcpRaw(port, Buffer.from([0, 40, 1, 2]), TCP_IDLE_MS + 3000);
    expect(idle).toEqual({ data: Buffer.alloc(0), closed: true });
    expect(Date.now() - started).toBeGreaterThanOrEqual(TCP_IDLE_MS - 100);
    const fine = decode((await udpRaw(port, query(3, 'example.test')))!);
    expect(fine.rcode).toBe('NOERROR');
  });

  it('limits UDP answers per network past the burst (a truncated slip, then nothing, alternately), while TCP still answers', async () => {
    const standings: ResolverStandings = { resolverStanding: () => 'unknown', pairResolver: () => undefined };
    const responder = await DnsResponder.start({ config: config(), senders: standings, level: () => 'normal', log, now: () => 1_000_000_000 });
    open.push(responder);
    const port = responder.address.port;
    for (let i = 0; i < BURST; i++) expect(decode((await udpRaw(port, query(i, 'example.test')))!).answers).toHaveLength(1);
    const slip = decode((await udpRaw(port, query(5000, 'example.test')))!);
    expect([slip.id, slip.flag_tc, slip.answers, slip.questions?.[0]?.name]).toEqual([5000, true, [], 'example.test']);
    expect(await udpRaw(port, query(5001, 'example.test'), 200)).toBeNull();
    expect(decode((await udpRaw(port, query(5002, 'example.test')))!).flag_tc).toBe(true);
    const { data } = await tcpRaw(port, framed(query(5003, 'example.test')));
    expect(decode(data.subarray(2)).answers).toHaveLength(1);
    expect(responder.answers()).toContainEqual({ mode: 'normal', mechanism: 'ratelimited', count: 3 });
  });

  it('refuses to start without primary hosts or a cluster, naming the setting', async () => {
    await expect(DnsResponder.start({
      config: config({ primary: [] }), senders: { resolverStanding: () => 'unknown', pairResolver: () => undefined }, level: () => 'normal', log,
    })).rejects.toThrow(/^admission\.dns\.primary: /);
  });

  it('enters high-load mode on a surge of MX queries against their learned normal rate', async () => {
    let now = 1_000_000_000;
    const responder = await DnsResponder.start({
      config: config(), senders: { resolverStanding: () => 'unknown', pairResolver: () => undefined }, level: () => 'normal', log, now: () => now,
    });
    open.push(responder);
    const port = responder.address.port;
    const exchange = async (id: number) => (decode((await udpRaw(port, query(id, 'example.test')))!).answers?.[0] as { data: { exchange: string } }).data;
    // Half an hour at one MX query every ten seconds: the normal rate, and the answers name the primary host.
    for (let i = 0; i < 180; i++) {
      expect((await exchange(i)).exchange).toBe('mx1.example.test');
      now += 10_000;
    }
    expect(responder.mxQueryRatio()).toBeLessThan(2);
    // Then sixty in one second: far past admission.pressure.mxQueries.overload (6) times normal.
    for (let i = 0; i < 60; i++) await udpRaw(port, query(1000 + i, 'example.test'));
    expect(responder.mxQueryRatio()).toBeGreaterThan(6);
    expect((await exchange(2000)).exchange).toBe('mxc.example.test');
    expect(responder.answers()).toContainEqual({ mode: 'high', mechanism: 'overflow', count: expect.any(Number) });
  });

  it('gives no MX query ratio until a normal rate is known', async () => {
    const { dns } = await world();
    expect(dns.mxQueryRatio()).toBeNull();
  });
});
