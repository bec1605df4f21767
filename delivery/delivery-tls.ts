/*
 * Which TLS each next hop of a delivery must offer.
 *
 * Takes a recipient domain and its next hops (from a static route or from MX records); gives each
 * usable hop its TLS level — none, opportunistic (STARTTLS when offered, not verified), require
 * (STARTTLS, not verified) or require-verified (STARTTLS with a certificate valid for the hop's
 * name) — or, when no hop may be used, the reason to defer.
 * Order of authority:
 *   1. an exact or ".parent" entry of delivery.tlsPolicy: the operator's word, used as it is;
 *   2. a static route: the operator chose the host, so MTA-STS (which is about MX records,
 *      RFC 8461 4) does not apply; the "*" entry or delivery.opportunisticTls sets the level;
 *   3. MX delivery: the domain's MTA-STS policy. `enforce` drops MX hosts outside the policy and
 *      requires verified TLS on the others; `testing` delivers at the default level and logs
 *      (pino warn: domain, mx, reason) what enforce would have refused; `none` or no policy: the
 *      default level ("*" entry, else delivery.opportunisticTls).
 * The one check of a session's TLS against a hop's level (tlsProblem, checkHopTls) is here too,
 * for queued delivery and the proxy alike; every STARTTLS uses starttlsOptions.
 * Network: through delivery-mtasts.ts (DNS via dns.servers, HTTPS); none here.
 * RFCs: 8461 (MTA-STS), 3207 (STARTTLS), 6125 (the name a certificate must carry).
 * Settings: delivery.tlsPolicy, delivery.opportunisticTls, delivery.mtaSts.*, delivery.tls.caFile.
 */
import { readFileSync } from 'node:fs';
import type { Socket } from 'node:net';
import { checkServerIdentity, rootCertificates, TLSSocket, type ConnectionOptions, type PeerCertificate } from 'node:tls';
import type { Resolver } from 'node:dns/promises';
import type { Logger } from 'pino';
import type { EgressConfig } from './delivery-config.js';
import { MtaSts, mxMatches, type StsPolicyCache } from './delivery-mtasts.js';
import type { NextHop } from './delivery-route.js';
import { STATUS } from '../base/base-outcome.js';

export type TlsLevel = EgressConfig['delivery']['tlsPolicy'][string];

export interface HopTls {
  level: TlsLevel;
  /** CA certificates to verify against; undefined: Node's store. */
  ca: string[] | undefined;
  /** Whose rule demands TLS, for the deferral text ("MTA-STS policy of example.com"). */
  rule: string;
  /** MTA-STS testing: told what an enforced policy would refuse on this hop's session. */
  audit: ((problem: string) => void) | null;
}

export type TlsPlan =
  | { kind: 'hops'; hops: Array<{ hop: NextHop; tls: HopTls }> }
  | { kind: 'defer'; status: string; reason: string };

/** Node's CA store plus the configured file: a private CA is trusted besides, not instead. */
export function loadCa(caFile: string | undefined): string[] | undefined {
  if (!caFile) return undefined;
  try {
    return [...rootCertificates, readFileSync(caFile, 'utf8')];
  } catch (err) {
    throw new Error(`delivery.tls.caFile: cannot read ${caFile}`, { cause: err });
  }
}

/** The tlsPolicy entry for a domain: exact, then ".parent" from the closest parent up, then "*". */
export function findTlsOverride(policy: EgressConfig['delivery']['tlsPolicy'], domain: string): { level: TlsLevel; key: string } | undefined {
  const d = domain.toLowerCase();
  if (policy[d]) return { level: policy[d], key: d };
  const labels = d.split('.');
  for (let i = 1; i < labels.length; i++) {
    const key = '.' + labels.slice(i).join('.');
    if (policy[key]) return { level: policy[key], key };
  }
  return policy['*'] ? { level: policy['*'], key: '*' } : undefined;
}

/** A host name to send as SNI (an address literal is not one). */
export function sniName(name: string): string | undefined {
  return /[a-z]/i.test(name) && !name.includes(':') ? name : undefined;
}

/**
 * The options of every outbound STARTTLS, queued or proxied: the hop's name as SNI and the CA
 * store, and no verdict in the handshake itself — `tlsProblem` judges the socket afterwards, so
 * one check decides for every level (and can tell an MTA-STS testing policy what would fail).
 */
export function starttlsOptions(name: string, ca: string[] | undefined): ConnectionOptions {
  return { ca, servername: sniName(name), rejectUnauthorized: false, checkServerIdentity: () => undefined };
}

/**
 * What is wrong with a session's TLS for `level` (null: nothing): `socket` is the session's
 * socket, `name` the host the certificate must be valid for (the hop's name, or its address when
 * the hop has no name). `require` wants TLS; `require-verified` a chain to a trusted CA and the name
 * (RFC 6125).
 */
export function tlsProblem(socket: Socket | null, level: TlsLevel, name: string): string | null {
  if (level !== 'require' && level !== 'require-verified') return null;
  if (!(socket instanceof TLSSocket) || !socket.encrypted) return 'STARTTLS not offered or not completed';
  if (level === 'require') return null;
  if (!socket.authorized) return `certificate not valid: ${String(socket.authorizationError ?? 'unverified')}`;
  const mismatch = checkServerIdentity(name, socket.getPeerCertificate() as PeerCertificate);
  return mismatch ? `certificate not valid for ${name}: ${mismatch.message}` : null;
}

/** The hop's TLS rule against the session: the reason it falls short (null: it does not); an MTA-STS testing policy is told what enforce would refuse. */
export function checkHopTls(tls: HopTls, socket: Socket | null, name: string): string | null {
  const problem = tlsProblem(socket, tls.level, name);
  if (problem) return problem;
  const audit = tls.audit ? tlsProblem(socket, 'require-verified', name) : null;
  if (audit) tls.audit!(audit);
  return null;
}

/** The deferral text of a hop whose session falls short of its TLS rule. */
export function tlsRefusal(tls: HopTls, problem: string): string {
  return `${tls.rule} requires ${tls.level === 'require' ? 'TLS' : 'verified TLS'}: ${problem}`;
}

export class TlsPlanner {
  readonly #ca: string[] | undefined;
  readonly #sts: MtaSts | null;

  constructor(private readonly config: EgressConfig, resolver: Resolver | null, policies: StsPolicyCache, private readonly log: Logger | null) {
    this.#ca = loadCa(config.delivery.tls.caFile);
    this.#sts = resolver && config.delivery.mtaSts.enabled
      ? new MtaSts(resolver, policies, { ca: this.#ca, port: config.delivery.mtaSts.policyPort })
      : null;
  }

  async plan(domain: string, via: 'route' | 'mx', hops: NextHop[]): Promise<TlsPlan> {
    const override = findTlsOverride(this.config.delivery.tlsPolicy, domain);
    const fallback: TlsLevel = override?.level ?? (this.config.delivery.opportunisticTls ? 'opportunistic' : 'none');
    const rule = override ? `TLS policy "${override.key}" (${override.level}) for ${domain}` : `TLS policy for ${domain}`;
    const plain = (level: TlsLevel, audit: HopTls['audit'] = null) => (hop: NextHop) => ({ hop, tls: { level, ca: this.#ca, rule, audit } });
    if ((override && override.key !== '*') || via === 'route' || !this.#sts) {
      return { kind: 'hops', hops: hops.map(plain(fallback)) };
    }
    const found = await this.#sts.lookup(domain);
    if (found.policy === null || found.policy.mode === 'none') return { kind: 'hops', hops: hops.map(plain(fallback)) };
    const { mode, mx } = found.policy;
    if (mode === 'testing') {
      return {
        kind: 'hops',
        hops: hops.map((hop) => {
          const warn = (reason: string) => this.log?.warn({ domain, mx: hop.name, reason, mtaSts: 'testing' }, 'MTA-STS testing policy would refuse this MX');
          if (!mxMatches(mx, hop.name)) warn(`MX not in the policy (mx: ${mx.join(', ')})`);
          return plain(fallback, warn)(hop);
        }),
      };
    }
    const allowed = hops.filter((hop) => mxMatches(mx, hop.name));
    if (allowed.length === 0) {
      return { kind: 'defer', status: STATUS.tlsRequired, reason: `MTA-STS policy of ${domain} (enforce): no MX host matches its mx patterns (${mx.join(', ')}); not sent` };
    }
    return {
      kind: 'hops',
      hops: allowed.map((hop) => ({ hop, tls: { level: 'require-verified' as const, ca: this.#ca, rule: `MTA-STS policy of ${domain} (enforce)`, audit: null } })),
    };
  }
}
