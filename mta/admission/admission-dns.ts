/*
 * The embedded authoritative DNS responder for the hosted domains' MX names ("steering by DNS",
 * optional, off by default): on UDP and TCP at admission.dns.address:port, it answers each
 * resolver with the hosts admission-steer.ts chooses for it, and pairs resolvers with the MTAs
 * that connect after them (admission-pairing.ts).
 *
 * Takes: the config (admission.dns.*, admission.pressure.mxQueries.overload, the tenants' domains,
 * the mx listeners' addresses, hostname), the known senders (`resolverStanding`, `pairResolver`),
 * this node's pressure level, in a cluster the live nodes (name, address, load, level); from the
 * SMTP listeners each connection's local and remote address (`connected`).
 * Gives: the answers (admission-dns-answer.ts), the MX query rate against its normal level
 * (`mxQueryRatio()`, admission-rate.ts) for the pressure signals, the pairing addresses the
 * listener also takes (`pairingAddresses`: the first mx listener at a primary host's address, or
 * the first mx listener; that host's A/AAAA answers name them), and the answers counted by mode and mechanism
 * (`answers()`, exported as ichidan_dns_answers_total by mta-metrics.ts).
 * Network: UDP and TCP on admission.dns.address:port. TCP (RFC 1035 4.2.2, RFC 7766): each
 * message preceded by its two-byte length, several queries per connection answered in order, a
 * connection idle for TCP_IDLE_MS closed, at most TCP_MAX_CONNECTIONS at once. Nothing a peer
 * sends can end the process: undecodable queries get FORMERR, fragments are dropped. UDP answers
 * are rate limited per network (admission-dns-ratelimit.ts), so forged sources gain no reflector.
 * Settings: admission.dns.* (address and port apply at the next start: the composition root
 * restarts the responder when they change; pairing addresses at the process's next start, as the
 * listeners take them once), admission.pressure.mxQueries.
 */
import { createSocket, type Socket as UdpSocket } from 'node:dgram';
import { createServer, isIP, type Server, type Socket } from 'node:net';
import type { Logger } from 'pino';
import type { Config } from '../mta-config-schema.js';
import { answerQuery, truncatedReply, type DnsMechanism, type DnsZoneView } from './admission-dns-answer.js';
import { UdpRateLimit } from './admission-dns-ratelimit.js';
import { NormalRate } from './admission-rate.js';
import { plainAddress, ResolverPairing } from './admission-pairing.js';
import { highLoad, primaryHosts, steer, type Level, type NodeInfo, type Standing, type SteerMode, type SteerInput } from './admission-steer.js';

/** What the responder needs of the known senders (KnownSenders in admission-senders.ts has these). */
export interface ResolverStandings {
  resolverStanding(resolver: string): Standing;
  pairResolver(resolver: string, client: string): void;
}

export interface DnsResponderOptions {
  config: Config;
  senders: ResolverStandings;
  level: () => Level;
  nodes?: () => NodeInfo[];
  log: Logger;
  now?: () => number;
}

export const TCP_IDLE_MS = 10_000;
export const TCP_MAX_CONNECTIONS = 256;

/** The domains answered for: admission.dns.domains, or every tenant's plain domains (not ".sub" or "*" forms). */
export function dnsZones(config: Config): string[] {
  const domains = config.admission.dns.domains ?? Object.values(config.tenants).flatMap((t) => t.domains);
  return [...new Set(domains.filter((d) => d !== '*' && !d.startsWith('.')).map((d) => d.toLowerCase()))];
}

export class DnsResponder {
  #config: Config;
  #zones: string[] = [];
  readonly #rate: NormalRate;
  readonly #pairing: ResolverPairing;
  readonly #counts = new Map<string, number>();
  readonly #limit: UdpRateLimit;
  readonly #tcp: Server;
  readonly #udp: UdpSocket;
  readonly #sockets = new Set<Socket>();
  readonly #serial: number;
  /** The listener takes these when it starts: they stay what they were at this responder's start. */
  readonly #pairingAddresses: string[];
  #address = { address: '', port: 0 };

  private constructor(private readonly opts: DnsResponderOptions) {
    this.#config = opts.config;
    const now = opts.now ?? Date.now;
    this.#rate = new NormalRate(now, opts.config.admission.pressure.learnAfter);
    this.#limit = new UdpRateLimit(now);
    this.#pairingAddresses = opts.config.admission.dns.pairingAddresses;
    this.#pairing = new ResolverPairing(opts.config.admission.dns, opts.senders, now);
    this.#serial = Math.floor(now() / 1000) >>> 0;
    this.apply(opts.config);
    this.#tcp = createServer((socket) => this.#serveTcp(socket));
    this.#tcp.maxConnections = TCP_MAX_CONNECTIONS;
    this.#tcp.on('error', (err) => opts.log.warn({ err }, 'dns responder: tcp error'));
    this.#udp = createSocket({ type: isIP(opts.config.admission.dns.address) === 6 ? 'udp6' : 'udp4' });
    this.#udp.on('message', (msg, rinfo) => this.#serveUdp(msg, rinfo.address, rinfo.port));
  }

  /** Where it listens (the port bound when admission.dns.port is 0). */
  get address(): { address: string; port: number } {
    return this.#address;
  }

  static async start(opts: DnsResponderOptions): Promise<DnsResponder> {
    const dns = opts.config.admission.dns;
    if (dns.primary.length === 0 && !opts.nodes) {
      throw new Error('admission.dns.primary: no primary hosts configured, and no cluster to take the live nodes from');
    }
    const responder = new DnsResponder(opts);
    await responder.#listen(dns.address, dns.port);
    opts.log.info({ ...responder.address, zones: responder.#zones }, 'dns responder listening');
    return responder;
  }

  async #listen(address: string, port: number): Promise<void> {
    try {
      await new Promise<void>((resolve, reject) => {
        this.#tcp.once('error', reject);
        this.#tcp.listen(port, address, () => { this.#tcp.off('error', reject); resolve(); });
      });
    } catch (err) {
      this.#udp.close();
      throw new Error(`admission.dns: cannot listen on TCP ${address}:${port}`, { cause: err });
    }
    const bound = this.#tcp.address();
    const actual = typeof bound === 'object' && bound ? bound.port : port;
    try {
      await new Promise<void>((resolve, reject) => {
        this.#udp.once('error', reject);
        this.#udp.bind(actual, address, () => { this.#udp.off('error', reject); resolve(); });
      });
    } catch (err) {
      await new Promise((resolve) => this.#tcp.close(resolve));
      try { this.#udp.close(); } catch { /* never bound */ }
      throw new Error(`admission.dns: cannot listen on UDP ${address}:${actual}`, { cause: err });
    }
    this.#udp.on('error', (err) => this.opts.log.warn({ err }, 'dns responder: udp error'));
    this.#address = { address, port: actual };
  }

  /** A reloaded config: zones, hosts, TTL and pairing apply to the next query. */
  apply(config: Config): void {
    this.#config = config;
    this.#zones = dnsZones(config);
    const dns = config.admission.dns;
    this.#pairing.apply({ pairingAddresses: this.#pairingAddresses, pairingWindow: dns.pairingWindow });
    if (dns.pairingAddresses.join() !== this.#pairingAddresses.join()) {
      this.opts.log.warn({ setting: 'admission.dns.pairingAddresses' }, 'dns responder: pairing addresses change at the next start');
    }
    if (this.#zones.length === 0) this.opts.log.warn({ setting: 'admission.dns.domains' }, 'dns responder: no domains to answer for');
    if (dns.primary.length === 0 && !this.opts.nodes) this.opts.log.warn({ setting: 'admission.dns.primary' }, 'dns responder: no primary hosts; MX questions get SERVFAIL');
  }

  /** MX queries per second against their normal rate; null until a normal rate is known. */
  mxQueryRatio(): number | null {
    return this.#rate.ratio();
  }

  /**
   * The addresses an SMTP listener also takes, so a pairing address handed out reaches this node:
   * all of them for the listener that takes them, none for the others.
   */
  pairingAddresses(listener: string): string[] {
    return this.#pairingListener()?.name === listener ? this.#pairingAddresses : [];
  }

  /** The mx listener whose host the pairing addresses stand in for: the first at a primary host's address, else the first. */
  #pairingListener(): { name: string; address: string } | null {
    const mx = this.#config.listeners.filter((l) => l.role === 'mx');
    const primary = new Set(this.#config.admission.dns.primary.map((h) => plainAddress(h.address)));
    return mx.find((l) => primary.has(plainAddress(l.address))) ?? mx[0] ?? null;
  }

  /** An SMTP connection arrived (called by the listeners): pairs its client with the resolver that led it here. */
  connected(localAddress: string, remoteAddress: string): void {
    const resolver = this.#pairing.connected(localAddress, remoteAddress);
    if (resolver) this.opts.log.debug({ resolver, client: plainAddress(remoteAddress), local: plainAddress(localAddress) }, 'dns responder: resolver paired');
  }

  /** Answers given so far, by mode and mechanism. */
  answers(): Array<{ mode: SteerMode; mechanism: DnsMechanism; count: number }> {
    return [...this.#counts].map(([key, count]) => {
      const [mode, mechanism] = key.split('\t') as [SteerMode, DnsMechanism];
      return { mode, mechanism, count };
    });
  }

  async close(): Promise<void> {
    for (const s of this.#sockets) s.destroy();
    await Promise.all([
      new Promise((resolve) => this.#tcp.close(resolve)),
      new Promise<void>((resolve) => { try { this.#udp.close(() => resolve()); } catch { resolve(); } }),
    ]);
  }

  /** What steering sees now, apart from the resolver's standing. */
  #steerInput(): SteerInput {
    const dns = this.#config.admission.dns;
    let nodes: NodeInfo[] | null = null;
    try {
      nodes = this.opts.nodes?.() ?? null;
    } catch (err) {
      this.opts.log.warn({ err }, 'dns responder: the cluster nodes could not be read; answering from the configured hosts');
    }
    return {
      primary: dns.primary, overflow: dns.overflow, nodes, level: this.opts.level(),
      mxQueryRatio: this.#rate.ratio(), overloadRatio: this.#config.admission.pressure.mxQueries.overload,
    };
  }

  #view(): DnsZoneView {
    const config = this.#config;
    return {
      zones: this.#zones,
      ttl: Math.max(1, Math.round(config.admission.dns.ttl / 1000)),
      nameserver: config.hostname,
      serial: this.#serial,
      mode: () => (highLoad(this.#steerInput()).high ? 'high' : 'normal'),
      steer: (resolver) => {
        this.#rate.hit();
        const steering = steer(this.#steerInput(), this.opts.senders.resolverStanding(plainAddress(resolver)));
        if (steering.mechanism === 'primary' || steering.mechanism === 'known') this.#pairing.answered(resolver);
        return steering;
      },
      addresses: (name, resolver) => this.#addresses(name, resolver),
    };
  }

  /** The addresses of a host handed out; the pairing listener's own is replaced by the resolver's pairing address. */
  #addresses(name: string, resolver: string): string[] | null {
    const dns = this.#config.admission.dns;
    const input = this.#steerInput();
    const hosts = [...primaryHosts(input), ...dns.overflow].filter((h) => h.name.toLowerCase().replace(/\.$/, '') === name);
    if (hosts.length === 0) return null;
    const own = this.#pairingListener()?.address;
    return [...new Set(hosts.map((h) => {
      if (!this.#pairing.byAddress || own === undefined || plainAddress(own) !== plainAddress(h.address)) return h.address;
      return this.#pairing.addressFor(resolver, isIP(h.address) === 6 ? 6 : 4) ?? h.address;
    }))];
  }

  #answer(msg: Buffer, resolver: string, transport: 'udp' | 'tcp'): Buffer | null {
    const result = answerQuery(msg, resolver, transport, this.#view());
    this.#count(result.mode, result.mechanism);
    return result.response;
  }

  #count(mode: SteerMode, mechanism: DnsMechanism): void {
    const key = `${mode}\t${mechanism}`;
    this.#counts.set(key, (this.#counts.get(key) ?? 0) + 1);
  }

  #serveUdp(msg: Buffer, address: string, port: number): void {
    const verdict = this.#limit.take(address);
    if (verdict !== 'send') this.#count(this.#view().mode(), 'ratelimited');
    const response = verdict === 'send' ? this.#answer(msg, address, 'udp') : verdict === 'slip' ? truncatedReply(msg) : null;
    if (!response) return;
    try {
      this.#udp.send(response, port, address, (err) => { if (err) this.opts.log.debug({ err }, 'dns responder: udp send failed'); });
    } catch (err) {
      // The socket closed meanwhile (the responder is stopping).
      this.opts.log.debug({ err }, 'dns responder: udp send failed');
    }
  }

  #serveTcp(socket: Socket): void {
    this.#sockets.add(socket);
    const resolver = socket.remoteAddress ?? '';
    let buffered = Buffer.alloc(0);
    socket.setTimeout(TCP_IDLE_MS, () => socket.destroy());
    socket.on('error', () => undefined);
    socket.on('close', () => this.#sockets.delete(socket));
    socket.on('data', (chunk) => {
      buffered = buffered.length === 0 ? chunk : Buffer.concat([buffered, chunk]);
      while (buffered.length >= 2) {
        const length = buffered.readUInt16BE(0);
        if (buffered.length < 2 + length) break;
        const msg = buffered.subarray(2, 2 + length);
        buffered = buffered.subarray(2 + length);
        const response = this.#answer(msg, resolver, 'tcp');
        if (!response) {
          // Nothing to answer (too short to hold a header, or a response): the stream cannot be trusted further.
          socket.destroy();
          return;
        }
        const framed = Buffer.alloc(2 + response.length);
        framed.writeUInt16BE(response.length, 0);
        response.copy(framed, 2);
        socket.write(framed);
      }
    });
  }
}
