/*
 * Where a recipient domain's mail goes next.
 *
 * A static route from the config wins (exact domain, then ".parent" entries from the closest
 * parent up, then "*"). Otherwise the domain's MX records are looked up through the configured
 * resolver, in preference order, with the domain's own address records when it has no MX
 * (RFC 5321 5.1) and a permanent failure for a null MX (RFC 7505). With no resolver configured
 * no lookup is ever made: a domain without a static route waits in the queue.
 */
import { Resolver } from 'node:dns/promises';
import { isIP } from 'node:net';
import type { EgressConfig, RouteConfig } from './delivery-config.js';
import { STATUS } from '../base/base-outcome.js';

export interface NextHop {
  /** The name the hop is known by (MX host or route host): used for TLS SNI and the transcript. */
  name: string;
  /** Addresses to try, in order. */
  addresses: string[];
  port: number;
  protocol: 'smtp' | 'lmtp';
}

export type RouteDecision =
  | { kind: 'hold' }
  /** `via`: a static route (an operator's choice of host) or the domain's MX / address records. */
  | { kind: 'hops'; via: 'route' | 'mx'; hops: NextHop[] }
  | { kind: 'fail'; permanent: boolean; status: string; reason: string };

export function findStaticRoute(routes: EgressConfig['routes'], domain: string): RouteConfig | undefined {
  if (routes[domain]) return routes[domain];
  const labels = domain.split('.');
  for (let i = 1; i < labels.length; i++) {
    const parent = routes['.' + labels.slice(i).join('.')];
    if (parent) return parent;
  }
  return routes['*'];
}

export function createResolver(config: EgressConfig): Resolver | null {
  if (config.dns.servers.length === 0) return null;
  const resolver = new Resolver({ timeout: config.dns.timeout, tries: 2 });
  resolver.setServers([...config.dns.servers]);
  return resolver;
}

/** The PTR query name of an address: 4.3.2.1.in-addr.arpa, or the nibble form under ip6.arpa. */
export function reverseName(ip: string): string {
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(ip)?.[1] ?? ip;
  if (isIP(mapped) === 4) return mapped.split('.').reverse().join('.') + '.in-addr.arpa';
  const [head, tail = ''] = mapped.split('::');
  const groups = (s: string) => (s ? s.split(':') : []);
  const missing = 8 - groups(head).length - groups(tail).length;
  const full = [...groups(head), ...Array(mapped.includes('::') ? missing : 0).fill('0'), ...groups(tail)];
  return full.map((g) => g.padStart(4, '0')).join('').split('').reverse().join('.') + '.ip6.arpa';
}

/**
 * Names of a client address through the configured resolver only. (Node's `Resolver.reverse`
 * consults /etc/hosts first; a PTR query does not.)
 */
export function reverseLookup(resolver: Resolver): (ip: string) => Promise<string[]> {
  return (ip) => resolver.resolvePtr(reverseName(ip));
}

function dnsCode(err: unknown): string {
  return (err as NodeJS.ErrnoException)?.code ?? 'EUNKNOWN';
}

export class Router {
  constructor(private readonly config: EgressConfig, private readonly resolver: Resolver | null) {}

  async route(domain: string): Promise<RouteDecision> {
    const fixed = findStaticRoute(this.config.routes, domain);
    if (fixed) {
      if ('hold' in fixed) return { kind: 'hold' };
      const addresses = await this.#addresses(fixed.host);
      if (!Array.isArray(addresses)) return addresses;
      return { kind: 'hops', via: 'route', hops: [{ name: fixed.host, addresses, port: fixed.port, protocol: fixed.protocol }] };
    }
    if (!this.resolver) {
      return { kind: 'fail', permanent: false, status: STATUS.noRoute, reason: `no route for ${domain} (no static route and no dns.servers configured)` };
    }
    let mx: { exchange: string; priority: number }[];
    try {
      mx = await this.resolver.resolveMx(domain);
    } catch (err) {
      const code = dnsCode(err);
      if (code === 'ENOTFOUND') return { kind: 'fail', permanent: true, status: STATUS.noSuchDomain, reason: `domain ${domain} does not exist (NXDOMAIN)` };
      if (code !== 'ENODATA') return { kind: 'fail', permanent: false, status: STATUS.lookupFailed, reason: `MX lookup for ${domain} failed: ${code}` };
      mx = [];
    }
    if (mx.length === 1 && (mx[0].exchange === '' || mx[0].exchange === '.')) {
      return { kind: 'fail', permanent: true, status: STATUS.nullMx, reason: `${domain} does not accept mail (null MX, RFC 7505)` };
    }
    const names = mx.length > 0
      ? [...mx].sort((a, b) => a.priority - b.priority).map((m) => m.exchange.replace(/\.$/, '').toLowerCase())
      : [domain];
    const hops: NextHop[] = [];
    let lastFailure: RouteDecision | null = null;
    for (const name of names) {
      const addresses = await this.#addresses(name);
      if (Array.isArray(addresses)) {
        if (addresses.length > 0) hops.push({ name, addresses, port: this.config.delivery.mxPort, protocol: 'smtp' });
      } else {
        lastFailure = addresses;
      }
    }
    if (hops.length > 0) return { kind: 'hops', via: 'mx', hops };
    // The domain itself has no address and no MX: nothing to retry. MX hosts without an address are
    // the destination's misconfiguration, which is often fixed within the retry period: defer.
    if (mx.length === 0 && lastFailure?.kind === 'fail' && lastFailure.permanent) return lastFailure;
    const why = lastFailure?.kind === 'fail' ? lastFailure.reason : 'no address';
    return { kind: 'fail', permanent: false, status: STATUS.lookupFailed, reason: `no usable mail host for ${domain}: ${why}` };
  }

  async #addresses(host: string): Promise<string[] | RouteDecision> {
    const literal = host.replace(/^\[(.*)\]$/, '$1');
    if (isIP(literal)) return [literal];
    if (!this.resolver) {
      return { kind: 'fail', permanent: false, status: STATUS.lookupFailed, reason: `cannot resolve ${host}: no dns.servers configured` };
    }
    const [v4, v6] = await Promise.allSettled([this.resolver.resolve4(host), this.resolver.resolve6(host)]);
    const found = [
      ...(v4.status === 'fulfilled' ? v4.value : []),
      ...(v6.status === 'fulfilled' ? v6.value : []),
    ];
    if (found.length > 0) return found;
    const codes = [v4, v6].map((r) => (r.status === 'rejected' ? dnsCode(r.reason) : 'ENODATA'));
    if (codes.every((c) => c === 'ENOTFOUND' || c === 'ENODATA')) {
      return { kind: 'fail', permanent: true, status: STATUS.hostWithoutAddress, reason: `host ${host} has no address (${codes[0]})` };
    }
    return { kind: 'fail', permanent: false, status: STATUS.lookupFailed, reason: `address lookup for ${host} failed: ${codes.join('/')}` };
  }
}
