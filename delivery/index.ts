/*
 * delivery/ — the egress: routes, sites, TLS rules, the SMTP client and its pools, transcripts.
 *
 * Takes: a delivery job from the queue (one message, the recipients of one tenant × destination
 *   domain that are due now) and the current config snapshot.
 * Gives back: one outcome per recipient — delivered (2xx), deferred (4xx, unreachable, lookup
 *   failure) or bounced (5xx, null MX, NXDOMAIN) — with the reply that decided it and the host
 *   that gave it; or `hold` when the route says to keep the mail. With transcripts on, every
 *   session's commands and replies go to the sink the caller passes (delivery-transcript.ts).
 * Network: DNS only to `dns.servers` (none: static routes only, no MTA-STS); SMTP/LMTP to the
 *   next hops, MX hosts tried in preference order, STARTTLS as delivery-tls.ts decides per
 *   domain (tlsPolicy, MTA-STS, else opportunistic); HTTPS to mta-sts.<domain> for policies.
 * RFCs: 5321 (SMTP, MX fallback to address records), 7505 (null MX), 3461 (DSN parameters
 *   passed on), 2033 (LMTP), 3207 (STARTTLS), 8461 (MTA-STS).
 * Settings: routes, dns.*, delivery.* (delivery.transcripts.* for the transcripts,
 *   delivery.tlsPolicy, delivery.mtaSts.*, delivery.tls.caFile for TLS).
 *
 * Sessions are pooled per (destination site, source address) (smtp/smtp-pool.ts, over the one SMTP
 * client smtp/smtp-connection.ts, which the transparent proxy leases from too); sites are named
 * in delivery-sites.ts; every delivery also returns the signal it left about the destination's
 * attitude (delivery-throttle.ts), which the queue's scheduler and throttle control act on.
 * A drain hands messages to a cluster peer through the same client (`transfer`): no route, MX or
 * MTA-STS, the peer's SMTP listener straight, opportunistic TLS, sessions pooled per peer.
 */
import type { Logger } from 'pino';
import type { EgressConfig } from './delivery-config.js';
import { createResolver, Router } from './delivery-route.js';
import { SmtpPool } from './smtp/smtp-pool.js';
import { SiteDirectory, type DeliverySite } from './delivery-sites.js';
import type { Signal } from './delivery-throttle.js';
import { StsPolicyCache } from './delivery-mtasts.js';
import { deliverToHop, sameOutcome, type OpenedSession, type OutboundMessage, type RecipientOutcome } from './delivery-smtp.js';
import { loadCa, TlsPlanner, type TlsPlan } from './delivery-tls.js';
import type { NextHop } from './delivery-route.js';
import { unopenedSession, type TranscriptSink } from './delivery-transcript.js';
import { deferReply, STATUS } from '../base/base-outcome.js';

export type { OpenedSession, OutboundMessage, OutboundRecipient, RecipientOutcome, Verdict } from './delivery-smtp.js';
export type { TranscriptChunk, TranscriptConnection, TranscriptLine, TranscriptMessage, TranscriptSink } from './delivery-transcript.js';

/** `signal` is absent when nothing was attempted on the network. */
export type DeliveryResult =
  | { kind: 'hold' }
  | { kind: 'outcomes'; outcomes: RecipientOutcome[]; signal?: Signal };

/** Where a delivery counts and leaves from: its site and its source address (from the scheduler). */
export interface Via {
  site: string;
  source: { address: string | null; helo: string | null };
  /** Connections the pair may have open, when a learnt cap holds it below the site's maxConnections. */
  connections?: number;
}

export type { DeliverySite } from './delivery-sites.js';
export type { Signal, SignalKind } from './delivery-throttle.js';

export { SmtpPool } from './smtp/smtp-pool.js';
export { StsPolicyCache } from './delivery-mtasts.js';

/** A cluster peer's SMTP listener (queue/cluster/cluster-nodes.ts). */
export interface PeerAddress {
  node: string;
  address: string;
  port: number;
}

/** Sessions kept open to one peer during a drain. */
const PEER_LIMITS = { maxConnections: 8, messagesPerConnection: 1000, idleTimeout: 10_000 };

export interface EgressShared {
  /** MTA-STS policies; pass the same one to every Egress of a process so a reload keeps them. */
  policies?: StsPolicyCache;
  /** Where MTA-STS `testing` findings are logged (warn); null: not logged. */
  log?: Logger | null;
  /** Told of each outbound session opened for a delivery (the log and the metrics). */
  onSession?: (s: OutboundSession) => void;
}

/** A session opened to deliver a tenant's mail: its site, and what delivery-smtp.ts saw of it. */
export interface OutboundSession extends OpenedSession {
  site: string;
  tenant: string;
  queueId: string;
}

export class Egress {
  readonly #tls: TlsPlanner;
  readonly #onSession: EgressShared['onSession'] | null;
  readonly sites: SiteDirectory;
  /** CA certificates for verified outbound TLS (undefined: Node's store). */
  readonly ca: string[] | undefined;
  /** Idle sessions outlive a config reload: the pools are shared by every Egress of one process. */
  constructor(private readonly config: EgressConfig, private readonly pool: SmtpPool = new SmtpPool(), shared: EgressShared = {}) {
    const resolver = createResolver(config);
    this.sites = new SiteDirectory(config, new Router(config, resolver));
    this.ca = loadCa(config.delivery.tls.caFile);
    this.#tls = new TlsPlanner(config, resolver, shared.policies ?? new StsPolicyCache(), shared.log ?? null);
    this.#onSession = shared.onSession ?? null;
  }

  /**
   * `transcripts` receives the transcripts of the sessions this delivery opens (a reused session
   * keeps the sink and the size cap it was opened with).
   */
  async deliver(domain: string, msg: OutboundMessage, transcripts: TranscriptSink | null = null, via: Via | null = null): Promise<DeliveryResult> {
    const { decision, site: routed } = await this.sites.route(domain);
    if (decision.kind === 'hold') return { kind: 'hold' };
    if (decision.kind === 'fail') {
      const reply = `${decision.permanent ? 550 : 451} ${decision.status} ${decision.reason}`;
      // A lookup that failed for now (not an answer such as NXDOMAIN or null MX) is a session that could not be opened: its row says why.
      const session = !decision.permanent && transcripts && this.config.delivery.transcripts.enabled
        ? unopenedSession({ host: domain, protocol: 'smtp', helo: via?.source.helo ?? this.config.delivery.heloName ?? this.config.hostname }, msg, decision.reason, transcripts)
        : null;
      return { kind: 'outcomes', outcomes: sameOutcome(msg.recipients, reply, domain, session) };
    }
    // The site the scheduler counted the delivery against, even should the route have moved since.
    const site: DeliverySite = via && via.site !== routed.key ? this.sites.limits(via.site) : routed;
    const localAddress = via?.source.address ?? null;
    const opts = {
      heloName: via?.source.helo ?? this.config.delivery.heloName ?? this.config.hostname,
      localAddress,
      pair: `${site.key}\u0000${localAddress ?? ''}`,
      pool: { maxConnections: Math.min(site.limits.maxConnections, via?.connections ?? Infinity), messagesPerConnection: site.messagesPerConnection, idleTimeout: site.idleTimeout },
      slowReply: site.slowReply,
      connectTimeout: this.config.delivery.connectTimeout,
      greetingTimeout: this.config.delivery.greetingTimeout,
      replyTimeout: this.config.delivery.replyTimeout,
      transcripts: transcripts && this.config.delivery.transcripts.enabled
        ? { sink: transcripts, maxBytes: this.config.delivery.transcripts.maxBytesPerSession }
        : null,
      opened: this.#onSession ? (s: OpenedSession) => this.#onSession!({ ...s, site: site.key, tenant: msg.tenant, queueId: msg.queueId }) : undefined,
    };
    const plan = await this.#tls.plan(domain, decision.via, decision.hops);
    if (plan.kind === 'defer') {
      return { kind: 'outcomes', outcomes: sameOutcome(msg.recipients, deferReply(plan.status, plan.reason), domain) };
    }
    let last: { reason: string; code: number; status: string; signal: Signal; session?: string | null } | null = null;
    for (const { hop, tls } of plan.hops) {
      const result = await deliverToHop(hop, msg, opts, this.pool, tls);
      if (result.kind === 'done') return { kind: 'outcomes', outcomes: result.outcomes, signal: result.signal };
      // A host that refused says nothing of the next one; the worst of them counts only if none took the mail.
      last = !last || rank(result.signal) >= rank(last.signal) ? result : { ...result, signal: last.signal };
    }
    const reply = deferReply(last?.status ?? STATUS.noAnswer, last?.reason ?? 'no next hop');
    return { kind: 'outcomes', outcomes: sameOutcome(msg.recipients, reply, domain, last?.session), signal: last?.signal };
  }

  /**
   * One transaction handing `msg` to a cluster peer (a drain; the message carries the transfer's
   * parameters). The outcomes are the peer's replies, one per recipient; an unreachable peer
   * gives every recipient its 4xx. What they mean is the caller's business (queue-transfer.ts).
   */
  async transfer(peer: PeerAddress, msg: OutboundMessage): Promise<RecipientOutcome[]> {
    const hop: NextHop = { name: peer.address, addresses: [peer.address], port: peer.port, protocol: 'smtp' };
    const opts = {
      heloName: this.config.delivery.heloName ?? this.config.hostname,
      localAddress: null,
      pair: `cluster-peer\u0000${peer.node}`,
      pool: PEER_LIMITS,
      slowReply: Infinity,
      connectTimeout: this.config.delivery.connectTimeout,
      greetingTimeout: this.config.delivery.greetingTimeout,
      replyTimeout: this.config.delivery.replyTimeout,
      transcripts: null,
    };
    const result = await deliverToHop(hop, msg, opts, this.pool, { level: 'opportunistic', ca: this.ca, rule: 'cluster transfer', audit: null });
    if (result.kind === 'done') return result.outcomes;
    return sameOutcome(msg.recipients, deferReply(result.status, result.reason), peer.node);
  }

  /** The TLS each of these hops of a recipient domain must offer (delivery-tls.ts), for the proxy. */
  tlsPlan(domain: string, via: 'route' | 'mx', hops: NextHop[]): Promise<TlsPlan> {
    return this.#tls.plan(domain, via, hops);
  }

  /** The scheduler's view of a domain's site (cached route; a lookup when not). */
  site(domain: string): DeliverySite | Promise<DeliverySite> {
    return this.sites.site(domain);
  }

  /** Connections open to the (site, source) pair, idle ones included. */
  openToPair(site: string, source: string): number {
    return this.pool.openCount(`${site}\u0000${source}`);
  }

  /** Closes idle sessions of the (site, source) pair until at most `keep` are open (a cluster lease given back). */
  trimPair(site: string, source: string, keep: number): Promise<void> {
    return this.pool.trim(`${site}\u0000${source}`, keep);
  }

  /** QUITs the idle sessions and waits (briefly) for them to end, so their transcripts are complete. */
  closeIdleSessions(): Promise<void> {
    return this.pool.closeAll();
  }
}

function rank(signal: Signal): number {
  return ['ok', 'failed', 'slow', 'capped', 'refused', 'throttled'].indexOf(signal.kind);
}
