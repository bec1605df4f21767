/*
 * Pairing resolvers with the MTAs that connect after them: the paper's "whitelist of MX query
 * sources". A resolver paired with known senders becomes known itself (KnownSenders), and in
 * high-load mode its answers keep naming the primary hosts.
 *
 * Takes: admission.dns.pairingAddresses and admission.dns.pairingWindow; from the DNS responder,
 * each MX answer (`answered`) and the address each resolver is handed (`addressFor`); from the
 * SMTP listeners, each connection's local and remote address (`connected`).
 * Gives: `pairResolver(resolver, client)` calls to the known senders, each pair at most once per
 * REPORT_AGAIN.
 *
 * By address (pairing addresses configured): a resolver is handed one pairing address of the
 * family asked for, kept while it keeps asking and otherwise reused least recently used first. A
 * connection arriving on a pairing address within pairingWindow of it being handed to exactly one
 * resolver pairs that resolver with the client; an address handed to two resolvers within the
 * window (more resolvers than addresses) pairs nobody.
 * By timing (none configured): a connection from a client not paired yet (or not for REPORT_AGAIN)
 * pairs it with the resolver that got an MX answer within pairingWindow before it, when exactly one did. When several did, the client's
 * next connections narrow it down: only resolvers that preceded every one of them stay
 * candidates, and the client is paired once one remains. With more than MAX_CANDIDATES recent
 * resolvers the timing tells nothing and the connection is not used.
 */
import { isIP } from 'node:net';

export interface PairingSink {
  pairResolver(resolver: string, client: string): void;
}

/** Resolvers answered within the window beyond which a connection's timing says nothing. */
export const MAX_CANDIDATES = 64;
/** Most resolvers, clients and pairs remembered (the oldest go first). */
export const MAX_TRACKED = 10_000;
/** A pair already reported is reported again after this long (ms), so the known senders see it is still in use. */
export const REPORT_AGAIN = 3_600_000;

/** `::ffff:192.0.2.1` (an IPv4 client on a dual-stack socket) as `192.0.2.1`. */
export function plainAddress(address: string): string {
  const m = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(address);
  return (m ? m[1] : address).toLowerCase();
}

/** Sets `key` as the newest entry of `map`, dropping the oldest past MAX_TRACKED. */
function touch<K, V>(map: Map<K, V>, key: K, value: V): void {
  map.delete(key);
  map.set(key, value);
  if (map.size > MAX_TRACKED) map.delete(map.keys().next().value as K);
}

export class ResolverPairing {
  #addresses: string[] = [];
  #window = 0;
  /** Per pairing address: the resolvers it was handed to, with when it last was. */
  readonly #holders = new Map<string, Map<string, number>>();
  /** Per resolver and family ("192.0.2.53/4"): its pairing address. */
  readonly #assigned = new Map<string, string>();
  /** Timing: resolvers by their last MX answer, oldest first. */
  readonly #answered = new Map<string, number>();
  /** Timing: clients whose resolver is not told apart yet, with the candidates left. */
  readonly #pending = new Map<string, Set<string>>();
  readonly #reported = new Map<string, number>();
  /** Timing: clients already paired, with when; their connections are not used again for REPORT_AGAIN. */
  readonly #timed = new Map<string, number>();

  constructor(config: { pairingAddresses: readonly string[]; pairingWindow: number }, private readonly sink: PairingSink, private readonly now: () => number = Date.now) {
    this.apply(config);
  }

  apply(config: { pairingAddresses: readonly string[]; pairingWindow: number }): void {
    this.#addresses = config.pairingAddresses.map(plainAddress);
    this.#window = config.pairingWindow;
    for (const address of [...this.#holders.keys()]) if (!this.#addresses.includes(address)) this.#holders.delete(address);
    for (const [key, address] of [...this.#assigned]) if (!this.#addresses.includes(address)) this.#assigned.delete(key);
  }

  get byAddress(): boolean {
    return this.#addresses.length > 0;
  }

  /** The pairing address `resolver` is handed for one of this node's hosts, or null when none of that family is configured. */
  addressFor(resolver: string, family: 4 | 6): string | null {
    const pool = this.#addresses.filter((a) => isIP(a) === family);
    if (pool.length === 0) return null;
    const now = this.now();
    resolver = plainAddress(resolver);
    const key = `${resolver}/${family}`;
    let address = this.#assigned.get(key);
    if (address === undefined) {
      address = this.#leastRecent(pool);
      const holders = this.#holders.get(address) ?? new Map<string, number>();
      for (const [other, at] of [...holders]) {
        if (now - at > this.#window) holders.delete(other);
        this.#assigned.delete(`${other}/${family}`);
      }
      this.#holders.set(address, holders);
    }
    touch(this.#assigned, key, address);
    this.#holders.get(address)!.set(resolver, now);
    return address;
  }

  /** The address of `pool` handed out longest ago (never: first). */
  #leastRecent(pool: string[]): string {
    const last = (a: string) => Math.max(0, ...(this.#holders.get(a)?.values() ?? []));
    return pool.reduce((best, a) => (last(a) < last(best) ? a : best));
  }

  /** An MX answer naming hosts went to `resolver`. */
  answered(resolver: string): void {
    const now = this.now();
    touch(this.#answered, plainAddress(resolver), now);
    for (const [r, at] of this.#answered) {
      if (now - at <= this.#window) break;
      this.#answered.delete(r);
    }
  }

  /** An SMTP connection arrived on `localAddress` from `remoteAddress`; the resolver it was paired with, if any. */
  connected(localAddress: string, remoteAddress: string): string | null {
    const client = plainAddress(remoteAddress);
    const resolver = this.byAddress ? this.#byAddress(plainAddress(localAddress)) : this.#byTiming(client);
    if (resolver === null) return null;
    const pair = `${resolver} ${client}`;
    const now = this.now();
    const last = this.#reported.get(pair);
    if (last === undefined || now - last >= REPORT_AGAIN) {
      touch(this.#reported, pair, now);
      this.sink.pairResolver(resolver, client);
    }
    return resolver;
  }

  #byAddress(local: string): string | null {
    const now = this.now();
    const recent = [...(this.#holders.get(local) ?? [])].filter(([, at]) => now - at <= this.#window);
    return recent.length === 1 ? recent[0][0] : null;
  }

  #byTiming(client: string): string | null {
    const now = this.now();
    const paired = this.#timed.get(client);
    if (paired !== undefined && now - paired < REPORT_AGAIN) return null;
    const candidates = new Set([...this.#answered].filter(([, at]) => now - at <= this.#window).map(([r]) => r));
    if (candidates.size === 0 || candidates.size > MAX_CANDIDATES) return null;
    const before = this.#pending.get(client);
    let left = before ? new Set([...before].filter((r) => candidates.has(r))) : candidates;
    // None left: the client asks another resolver now; start over from this connection.
    if (left.size === 0) left = candidates;
    if (left.size === 1) {
      this.#pending.delete(client);
      touch(this.#timed, client, now);
      return [...left][0];
    }
    touch(this.#pending, client, left);
    return null;
  }
}
