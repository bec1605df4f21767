/*
 * delivery/'s settings: `dns`, `delivery` and `routes`, with their defaults beside them (the root
 * schema, mta/mta-config-schema.ts, only assembles the sections and checks fields across them).
 *
 * `EgressConfig` is the slice of the whole configuration delivery/ reads; a whole `Config` is one.
 */
import { accessSync, constants } from 'node:fs';
import { z } from 'zod';
import { dnsServer, domain, duration, hostname, ipAddress, port, rate, size } from '../base/base-config.js';

/** Limits of one destination site, as seen from one source address (what the destination's per-client limits count). */
const siteLimitFields = {
  /** Most connections open to the site from one source address, idle ones included. */
  maxConnections: z.number().int().positive().max(10_000),
  /** Slow start: the connection limit a site starts at; it grows with successes up to `maxConnections`. */
  initialConnections: z.number().int().positive().max(10_000),
  /** Messages one connection carries before it is closed and a new one opened. */
  messagesPerConnection: z.number().int().positive(),
  /** An unused connection is closed after this long. */
  idleTimeout: duration,
  /** Most messages per interval from one source address, e.g. "600/m", "20/s", "10000/h" (default: no limit). */
  messageRate: rate.optional(),
  /** A reply that takes longer than this is a throttle signal (the site is slowed down). */
  slowReply: duration,
};

const route = z.union([
  z.strictObject({
    /** Next hop host (an address or a name resolved through dns.servers). */
    host: z.string().min(1),
    port: port.default(25),
    /** smtp, or lmtp for a mailbox server speaking LMTP. */
    protocol: z.enum(['smtp', 'lmtp']).default('smtp'),
  }),
  z.strictObject({
    /** Keep the mail queued (held, no expiry) until the route changes and the mail is released. */
    hold: z.literal(true),
  }),
]);

const siteDefaults = z.strictObject({
  maxConnections: siteLimitFields.maxConnections.default(20),
  initialConnections: siteLimitFields.initialConnections.default(5),
  messagesPerConnection: siteLimitFields.messagesPerConnection.default(100),
  idleTimeout: siteLimitFields.idleTimeout.prefault('5s'),
  messageRate: siteLimitFields.messageRate,
  slowReply: siteLimitFields.slowReply.prefault('30s'),
});

const namedSite = z.strictObject({
  /**
   * MX host name patterns ("mx.example.net", "*.google.com"): a domain whose mail hosts include a
   * match belongs to this site. Static-route hosts are matched the same way.
   */
  mx: z.array(z.string().regex(/^(\*\.)?[a-z0-9]([a-z0-9.-]*[a-z0-9])?\.?$/i, 'a host name, or "*." and a domain')).default([]),
  /** Recipient domain patterns ("example.com", "*.example.com") that belong to this site whatever their MX. */
  domains: z.array(z.string().regex(/^(\*\.)?[a-z0-9]([a-z0-9.-]*[a-z0-9])?\.?$/i, 'a domain, or "*." and a domain')).default([]),
  maxConnections: siteLimitFields.maxConnections.optional(),
  initialConnections: siteLimitFields.initialConnections.optional(),
  messagesPerConnection: siteLimitFields.messagesPerConnection.optional(),
  idleTimeout: siteLimitFields.idleTimeout.optional(),
  messageRate: siteLimitFields.messageRate,
  slowReply: siteLimitFields.slowReply.optional(),
}).refine((s) => s.mx.length + s.domains.length > 0, 'a site needs at least one `mx` or `domains` pattern');

export const sourceAddress = z.strictObject({
  /** A local address to bind outbound connections to. */
  address: ipAddress,
  /** The EHLO name used from this address (its PTR name, usually); default delivery.heloName. */
  helo: hostname.optional(),
});

export const dnsSchema = z.strictObject({
  /** Resolvers to ask for MX/A records. Empty: static routes only, no lookup ever. */
  servers: z.array(dnsServer).default([]),
  timeout: duration.prefault('5s'),
  /** Resolve each client's address to a name for Received headers (through `servers` only). */
  reverseLookup: z.boolean().default(false),
}).prefault({});

export const deliverySchema = z.strictObject({
  /** Name sent in EHLO; defaults to `hostname`. */
  heloName: hostname.optional(),
  connectTimeout: duration.prefault('30s'),
  greetingTimeout: duration.prefault('60s'),
  /** Idle time allowed while waiting for a reply. */
  replyTimeout: duration.prefault('5m'),
  /** Port used for hosts found through MX/address records (a lab or test network may move it off 25). */
  mxPort: port.default(25),
  /**
   * Try STARTTLS when offered, without verifying the certificate (opportunistic TLS). This is the
   * level of every destination that neither `tlsPolicy` nor an MTA-STS policy says more about.
   */
  opportunisticTls: z.boolean().default(true),
  /** Certificate verification for outbound TLS (MTA-STS, `require-verified`, the policy fetch). */
  tls: z.strictObject({
    /** A PEM file of extra CA certificates trusted besides Node's store (a private CA, a test CA). */
    caFile: z.string().min(1).optional(),
  }).prefault({}),
  /**
   * TLS per recipient domain, keys as in `routes` (exact, ".parent", "*"): `require-verified`
   * (STARTTLS with a certificate valid for the next hop's name, else defer), `require` (STARTTLS
   * without a certificate check, else defer), `opportunistic` (STARTTLS when offered, not
   * verified: for a named private host with a broken certificate), `none` (never STARTTLS).
   * An exact or ".parent" entry is the operator's word for that domain and replaces MTA-STS;
   * "*" only changes the default level, and MTA-STS still applies on top of it.
   */
  tlsPolicy: z.record(domain, z.enum(['require-verified', 'require', 'opportunistic', 'none'])).default({}),
  /**
   * MTA-STS (RFC 8461) for mail delivered through MX records (never for static routes): the
   * `_mta-sts` TXT record through dns.servers (none configured: no lookups), the policy over
   * HTTPS, kept in memory for its max_age.
   */
  mtaSts: z.strictObject({
    enabled: z.boolean().default(true),
    /** Port of the policy host's HTTPS server (443; a lab or test network may move it). */
    policyPort: port.default(443),
  }).prefault({}),
  /** Limits of every destination site, per source address (see `sites` for sites with their own). */
  site: siteDefaults.prefault({}),
  /**
   * Named sites: domains grouped by MX host patterns or domain patterns, with their own limits
   * (unset ones come from `site`). Other domains form one site per set of MX hosts.
   */
  sites: z.record(z.string().regex(/^[a-z0-9][a-z0-9_.-]*$/i, 'a site name of letters, digits, ".", "-" and "_"'), namedSite).default({}),
  /** Named sets of local addresses that tenants deliver from (`tenants.NAME.egress.sourcePool`). */
  sourcePools: z.record(z.string().regex(/^[a-z0-9][a-z0-9_-]*$/i, 'a pool name of letters, digits, "-" and "_"'), z.array(sourceAddress).min(1)).default({}),
  /** Reactions to a destination throttling a (site, source address) pair. */
  throttle: z.strictObject({
    /** First pause of a throttled pair; each further throttle within `window` doubles it, up to `maxPause`. */
    pause: duration.prefault('1m'),
    maxPause: duration.prefault('30m'),
    /** Signals are counted over this window, for the doubling and for attribution. */
    window: duration.prefault('10m'),
    /** A tenant is blamed once the site has had this many throttle signals in `window`… */
    minSignals: z.number().int().positive().default(3),
    /** …and that tenant's share of those signals (or of the site's deliveries in the window) reaches this. */
    attributionShare: z.number().gt(0).max(1).default(0.6),
    /** How long a blamed tenant stays suspended for the site (0: never suspend automatically). */
    tenantSuspension: duration.prefault('30m'),
    /**
     * A pair whose destination refused a connection at its banner for the number we had open
     * (a per-address connection cap) stays one below that count, and tries one more after this long.
     */
    capProbe: duration.prefault('1m'),
  }).prefault({}),
  /** Every command and reply of every outbound session, stored in the queue database (`ichidan sessions`). */
  transcripts: z.strictObject({
    enabled: z.boolean().default(true),
    /** Text stored per session; later lines are counted, not stored, and the session is marked truncated. */
    maxBytesPerSession: size.prefault('64KB'),
    /** Sessions that ended longer ago than this are deleted (checked hourly). */
    retention: duration.prefault('7d'),
  }).prefault({}),
}).prefault({}).superRefine((delivery, ctx) => {
  if (delivery.tls.caFile !== undefined) {
    try {
      accessSync(delivery.tls.caFile, constants.R_OK);
    } catch (err) {
      ctx.addIssue({ code: 'custom', path: ['tls', 'caFile'], message: `cannot read ${delivery.tls.caFile}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}` });
    }
  }
  for (const [name, s] of Object.entries(delivery.sites)) {
    const max = s.maxConnections ?? delivery.site.maxConnections;
    const initial = s.initialConnections ?? delivery.site.initialConnections;
    if (initial > max) ctx.addIssue({ code: 'custom', path: ['sites', name, 'initialConnections'], message: `initialConnections (${initial}) is above maxConnections (${max})` });
  }
  if (delivery.site.initialConnections > delivery.site.maxConnections) {
    ctx.addIssue({ code: 'custom', path: ['site', 'initialConnections'], message: `initialConnections (${delivery.site.initialConnections}) is above maxConnections (${delivery.site.maxConnections})` });
  }
});

/** Next hop per recipient domain: exact "example.com", ".example.com" for subdomains, "*" for the rest. */
export const routesSchema = z.record(domain, route).default({});

export type DnsConfig = z.output<typeof dnsSchema>;
export type DeliverySection = z.output<typeof deliverySchema>;
export type RouteConfig = z.output<typeof route>;
/** A site's settings as written (`delivery.site`): the defaults every site starts from. */
export type SiteSettings = DeliverySection['site'];
export type NamedSiteConfig = DeliverySection['sites'][string];

/** What delivery/ reads of the whole configuration. */
export interface EgressConfig {
  hostname: string;
  dns: DnsConfig;
  delivery: DeliverySection;
  routes: Record<string, RouteConfig>;
}
