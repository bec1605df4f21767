/*
 * The configuration schema: the one source of truth for what an Ichidan YAML file may say.
 *
 * Every object is strict (an unknown key is an error naming its path), every field carries its
 * default beside it, and durations ("30s", "5m", "4h", "5d") and sizes ("25MB") are parsed here so
 * the rest of the process only ever sees milliseconds and bytes. The TypeScript types of the
 * running configuration are derived from this schema (`Config`), never written by hand.
 */
import { accessSync, constants } from 'node:fs';
import { z } from 'zod';
import { engineSchema, scanningSchema, tenantScanningSchema } from '../engines/engines-config.js';
import { cidr, dnsServer, domain, duration, hostname, ipAddress, port, rate, size } from './mta-config-primitives.js';

export { duration, size };

const listener = z.strictObject({
  /** Name used in logs and Received headers. */
  name: z.string().min(1),
  /**
   * mx: accepts mail for hosted domains (and relays for trusted networks); submission: AUTH
   * required to relay; proxy: the transparent proxy for redirected port-25 traffic (see `proxy`).
   */
  role: z.enum(['mx', 'submission', 'proxy']),
  address: ipAddress.default('127.0.0.1'),
  /** 0 picks a free port (tests). */
  port: z.number().int().min(0).max(65535),
  /** starttls: offered after EHLO; implicit: TLS from the first byte (port 465 style); none: plaintext only. */
  tls: z.enum(['starttls', 'implicit', 'none']).default('starttls'),
  /** Wait this long before the 220 greeting; a client that talks first is refused (pregreet check). */
  greetingDelay: duration.default(0),
  /** Most simultaneous connections on this listener; extra clients get 421. */
  maxClients: z.number().int().positive().default(1000),
});

const user = z.strictObject({
  /** The AUTH user name. */
  name: z.string().min(1),
  /** A bcrypt hash ("$2b$..."), as printed by `ichidan hash-password`. */
  password: z.string().regex(/^\$2[aby]\$\d\d\$[./A-Za-z0-9]{53}$/, 'a bcrypt hash ("$2b$..."); make one with `ichidan hash-password`'),
  /** The tenant whose queues this user's mail goes to. */
  tenant: z.string().min(1),
});

const tenant = z.strictObject({
  /** Domains this tenant hosts: the MX listener accepts mail for them. */
  domains: z.array(domain).default([]),
  /** Client networks (MSAs of this tenant) that may relay without AUTH. */
  networks: z.array(cidr).default([]),
  /** The engines this tenant's mail goes through and its verdict overrides (see `scanning`). */
  scanning: tenantScanningSchema.optional(),
  /** How this tenant's outbound mail is scheduled: its share, its caps, its source addresses. */
  egress: z.strictObject({
    /** Share of each site's capacity relative to the other tenants with mail for it (deficit round robin). */
    weight: z.number().min(0.01).max(1000).default(1),
    /** Most deliveries of this tenant in flight at once, over all destinations (default: no cap of its own). */
    concurrency: z.number().int().positive().optional(),
    /** Most messages this tenant may hand to destinations per hour (default: no cap). */
    messagesPerHour: z.number().int().positive().optional(),
    /** Name of a `delivery.sourcePools` entry: the local addresses (and HELO names) its mail leaves from. */
    sourcePool: z.string().min(1).optional(),
    /** Keep this tenant's mail queued without delivering it (as `ichidan tenants suspend` does, persistently). */
    suspended: z.boolean().default(false),
  }).prefault({}),
});

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

const sourceAddress = z.strictObject({
  /** A local address to bind outbound connections to. */
  address: ipAddress,
  /** The EHLO name used from this address (its PTR name, usually); default delivery.heloName. */
  helo: hostname.optional(),
});

export const configSchema = z.strictObject({
  /** The name this MTA gives in its greeting, its Received headers and its EHLO. */
  hostname: hostname.default('localhost'),
  /** Where mail for the bare `<postmaster>` recipient goes (RFC 5321 4.5.1); default postmaster@hostname. */
  postmaster: z.email('an address such as "postmaster@example.com"').optional(),
  /** Spool, queue database and generated certificate live under this folder. */
  dataDir: z.string().min(1).default('./var'),
  log: z.strictObject({
    level: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
  }).prefault({}),
  dns: z.strictObject({
    /** Resolvers to ask for MX/A records. Empty: static routes only, no lookup ever. */
    servers: z.array(dnsServer).default([]),
    timeout: duration.prefault('5s'),
    /** Resolve each client's address to a name for Received headers (through `servers` only). */
    reverseLookup: z.boolean().default(false),
  }).prefault({}),
  tls: z.strictObject({
    /** PEM certificate and key files; when both are absent a self-signed pair is made in dataDir/tls. */
    cert: z.string().optional(),
    key: z.string().optional(),
  }).refine((t) => (t.cert === undefined) === (t.key === undefined), 'tls.cert and tls.key go together').prefault({}),
  listeners: z.array(listener).min(1).default([
    { name: 'mx', role: 'mx', port: 2525 },
    { name: 'submission', role: 'submission', port: 2587 },
  ] as never),
  limits: z.strictObject({
    /** Largest message accepted (SIZE is advertised; 552 beyond it). */
    maxMessageSize: size.prefault('25MB'),
    /** Most recipients per transaction (452 beyond). */
    maxRecipients: z.number().int().positive().default(100),
    /** Idle time allowed between commands. */
    commandTimeout: duration.prefault('5m'),
    /** Longest a DATA transfer may take. */
    dataTimeout: duration.prefault('10m'),
    /*
     * The structure a message may have (mta-structure.ts). Past any of them the message follows
     * `scanning.unscannable` (default: 550 5.6.0), with or without engines. The defaults sit below
     * what the engines handle (mailsplit: 1 MiB per header block, 1000 parts; clamd: MaxRecursion
     * 17), so a padded message is judged here before an engine gives up on it.
     */
    /** Largest header block, of the message or of any MIME part (Exchange's MaxHeaderSize is 256 KB too). */
    maxHeaderSize: size.prefault('256KB'),
    /** Most header fields in one header block. */
    maxHeaderFields: z.number().int().positive().default(1000),
    /** Deepest MIME nesting: multiparts and attached messages inside each other. */
    maxMimeDepth: z.number().int().positive().max(100).default(16),
    /** Most MIME parts in the whole message, containers and attached messages' parts included. */
    maxMimeParts: z.number().int().positive().max(10000).default(500),
    /**
     * A command line must arrive whole within this, however its bytes trickle in (bytes reset
     * `commandTimeout`, not this); past it, 421 4.4.2 and the connection is closed (0 = off).
     */
    commandDeadline: duration.prefault('5m'),
    /**
     * During DATA the deadline is a grace plus the bytes received so far divided by this rate
     * (bytes per second, Postfix's smtpd_min_data_rate); a slower client gets 421 4.4.2 (0 = off).
     * The grace is `commandDeadline`, or `commandTimeout` when `commandDeadline` is 0.
     */
    minDataRate: z.number().int().min(0).default(500),
    /** Accept NUL bytes in message data (refused with 550 5.6.0 otherwise: RFC 5321 section 4.5.2 text has none). */
    allowNul: z.boolean().default(false),
    /** Per client address and listener (Postfix's anvil); past a limit the client gets 421 4.7.0 (450 4.7.1 for mail). */
    client: z.strictObject({
      /** Most simultaneous connections from one address (0 = no limit). */
      maxConnections: z.number().int().min(0).default(50),
      /** Most new connections from one address per minute (0 = no limit). */
      connectionRate: z.number().int().min(0).default(0),
      /** Most MAIL FROM commands from one address per minute, accepted or not (0 = no limit). */
      messageRate: z.number().int().min(0).default(0),
      /**
       * IPv6 clients are counted (here and by AUTH's per-address limits) by this many leading bits
       * of their address, as a site gets a whole /64; IPv4 clients by their whole address.
       */
      ipv6Prefix: z.number().int().min(16).max(128).default(64),
      /** Addresses these limits (and the per-address AUTH limits) leave alone; default: trustedNetworks and tenants' networks. */
      exceptions: z.array(cidr).optional(),
    }).prefault({}),
  }).prefault({}),
  /** Failed AUTH attempts, counted per client address and per account (Dovecot's auth penalty, fail2ban's ban). */
  auth: z.strictObject({
    /** Failures within `window` from one address, or for one account, before it is blocked for `block`. */
    maxFailures: z.number().int().positive().default(10),
    window: duration.prefault('10m'),
    /** While blocked, every attempt gets 454 4.7.0 whatever the password, and no password is checked. */
    block: duration.prefault('10m'),
    /** The first failure's 535 waits this long; each further recent failure doubles it, up to `maxDelay`. */
    failureDelay: duration.prefault('1s'),
    maxDelay: duration.prefault('15s'),
    /** Failures in one session before it is closed with 421 4.7.0. */
    sessionFailures: z.number().int().positive().default(3),
    /**
     * Threads that check passwords (bcrypt), so the main thread never does. One thread checks about
     * 15 passwords a second at cost 10 and caps what guessers can burn at one core; more suit a
     * machine with cores to spare and many legitimate logins.
     */
    workers: z.number().int().min(1).max(16).default(1),
    /** Checks waiting for a thread; past this, 454 4.7.0. */
    queue: z.number().int().positive().default(64),
  }).prefault({}),
  /** Networks that may relay anywhere without AUTH; their mail is the hosting tenant's, or `_relay` for other domains. */
  trustedNetworks: z.array(cidr).default([]),
  users: z.array(user).default([]),
  tenants: z.record(z.string().regex(/^[a-z0-9][a-z0-9_-]*$/i, 'a tenant name of letters, digits, "-" and "_"'), tenant).default({}),
  queue: z.strictObject({
    /** fsync spool files and the queue database before 250 (turn off only for throwaway tests). */
    fsync: z.boolean().default(true),
    /** Under load, queue-database commits happen at most this often, so more transactions share one fsync. */
    commitWindow: duration.prefault('2ms'),
    /** First retry delay; later ones grow by `retryFactor` up to `retryMax`, each with ±jitter. */
    retryInitial: duration.prefault('5m'),
    retryMax: duration.prefault('1h'),
    retryFactor: z.number().min(1).default(2),
    retryJitter: z.number().min(0).max(1).default(0.2),
    /** Give up after this long in the queue and bounce. */
    maxAge: duration.prefault('5d'),
    /** Send a delay notice once a recipient has waited this long (0 = never). */
    delayWarning: duration.default(0),
    /** Most deliveries in flight in all. */
    concurrency: z.number().int().positive().default(100),
    /** Most deliveries in flight per lane (tenant × destination domain). */
    laneConcurrency: z.number().int().positive().default(20),
    /**
     * New mail is refused with 452 4.3.1 (at MAIL FROM, and at DATA) while the spool's or the queue
     * database's filesystem has less free space than this plus the declared SIZE, so the queue can
     * always record outcomes. Default: the larger of 64MB and 1.5 × limits.maxMessageSize. 0: no check.
     */
    minFree: z.union([z.literal(0), size]).optional(),
    /**
     * Space held in dataDir/reserve and given back when the queue database cannot record an outcome or
     * a removal for want of space (made again once there is room). 0: none.
     */
    reserve: z.union([z.literal(0), size]).prefault('16MB'),
    /** Spool files set aside at startup that were never acknowledged (no 250 was sent) are removed after this long. */
    leftoverRetention: duration.prefault('1d'),
  }).prefault({}),
  delivery: z.strictObject({
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
  }).prefault({}),
  /** Next hop per recipient domain: exact "example.com", ".example.com" for subdomains, "*" for the rest. */
  routes: z.record(domain, route).default({}),
  admin: z.strictObject({
    /** The admin API's unix socket (mode 0600); default dataDir/admin.sock. */
    socket: z.string().min(1).optional(),
    /** Also serve the admin API on this loopback TCP port (0 = any free port); needs `token`. */
    port: z.number().int().min(0).max(65535).optional(),
    address: ipAddress.refine((a) => /^127\./.test(a) || a === '::1', 'a loopback address (127.0.0.0/8 or ::1)').default('127.0.0.1'),
    /** Reload by itself when the config file changes (as SIGHUP does); a bad file is reported and ignored. */
    watchConfig: z.boolean().default(false),
    /** When set, every admin request must carry `Authorization: Bearer <token>` (the CLI reads ICHIDAN_ADMIN_TOKEN). */
    token: z.string().min(16, 'at least 16 characters').optional(),
  }).prefault({}),
  /** The transparent proxy (listeners with role proxy): legacy MTAs' redirected sessions relayed live. */
  proxy: z.strictObject({
    /** How long a proxied session waits for a turn at its destination site; then its client gets 451 4.4.5. */
    slotWait: duration.prefault('30s'),
    /**
     * Scan proxied mail (true: every tenant's; or a list of tenant names): spooled, scanned by the
     * engines, refused to the client before the destination sees it. Otherwise streamed through.
     */
    scan: z.union([z.boolean(), z.array(z.string().min(1))]).default(false),
    /** One JSON line per relayed transaction is appended to this file. */
    eventsFile: z.string().min(1).optional(),
    /** Selected outcomes are posted to this URL as a Slack-compatible payload ({"text": ...}). */
    webhook: z.strictObject({
      url: z.url({ protocol: /^https?$/, error: 'an http(s) URL' }),
      on: z.array(z.enum(['delivered', 'rejected', 'deferred', 'failed'])).default(['rejected', 'deferred', 'failed']),
    }).optional(),
  }).prefault({}),
  /** Scanning engines, run in parallel on every message before the reply to DATA (empty: no scanning). */
  engines: z.array(engineSchema).default([]),
  /** How the engines' results make one verdict. */
  scanning: scanningSchema.prefault({}),
}).superRefine((cfg, ctx) => {
  if (cfg.delivery.tls.caFile !== undefined) {
    try {
      accessSync(cfg.delivery.tls.caFile, constants.R_OK);
    } catch (err) {
      ctx.addIssue({ code: 'custom', path: ['delivery', 'tls', 'caFile'], message: `cannot read ${cfg.delivery.tls.caFile}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}` });
    }
  }
  const engineNames = new Set<string>();
  cfg.engines.forEach((e, i) => {
    if (engineNames.has(e.name)) ctx.addIssue({ code: 'custom', path: ['engines', i, 'name'], message: `another engine is already named "${e.name}"` });
    engineNames.add(e.name);
    if (e.type === 'mailauth' && cfg.dns.servers.length === 0) {
      ctx.addIssue({ code: 'custom', path: ['engines', i, 'type'], message: 'sender authentication needs DNS: set dns.servers' });
    }
  });
  for (const [name, t] of Object.entries(cfg.tenants)) {
    t.scanning?.engines?.forEach((e, i) => {
      if (!engineNames.has(e)) ctx.addIssue({ code: 'custom', path: ['tenants', name, 'scanning', 'engines', i], message: `no engine named "${e}" (engines: ${[...engineNames].join(', ') || 'none'})` });
    });
  }
  const owner = new Map<string, string>();
  for (const [name, t] of Object.entries(cfg.tenants)) {
    t.domains.forEach((d, i) => {
      const prev = owner.get(d);
      if (prev !== undefined) ctx.addIssue({ code: 'custom', path: ['tenants', name, 'domains', i], message: `domain "${d}" is already hosted by tenant "${prev}"` });
      owner.set(d, name);
    });
  }
  for (const [name, t] of Object.entries(cfg.tenants)) {
    const pool = t.egress.sourcePool;
    if (pool !== undefined && !(pool in cfg.delivery.sourcePools)) {
      ctx.addIssue({ code: 'custom', path: ['tenants', name, 'egress', 'sourcePool'], message: `no source pool "${pool}" (delivery.sourcePools: ${Object.keys(cfg.delivery.sourcePools).join(', ') || 'none'})` });
    }
  }
  for (const [name, s] of Object.entries(cfg.delivery.sites)) {
    const max = s.maxConnections ?? cfg.delivery.site.maxConnections;
    const initial = s.initialConnections ?? cfg.delivery.site.initialConnections;
    if (initial > max) ctx.addIssue({ code: 'custom', path: ['delivery', 'sites', name, 'initialConnections'], message: `initialConnections (${initial}) is above maxConnections (${max})` });
  }
  if (cfg.delivery.site.initialConnections > cfg.delivery.site.maxConnections) {
    ctx.addIssue({ code: 'custom', path: ['delivery', 'site', 'initialConnections'], message: `initialConnections (${cfg.delivery.site.initialConnections}) is above maxConnections (${cfg.delivery.site.maxConnections})` });
  }
  if (Array.isArray(cfg.proxy.scan)) {
    cfg.proxy.scan.forEach((t, i) => {
      if (!(t in cfg.tenants)) ctx.addIssue({ code: 'custom', path: ['proxy', 'scan', i], message: `no tenant "${t}" (tenants: ${Object.keys(cfg.tenants).join(', ') || 'none'})` });
    });
  }
  cfg.users.forEach((u, i) => {
    if (!(u.tenant in cfg.tenants)) ctx.addIssue({ code: 'custom', path: ['users', i, 'tenant'], message: `no tenant "${u.tenant}" (tenants: ${Object.keys(cfg.tenants).join(', ') || 'none'})` });
  });
  if (cfg.admin.port !== undefined && cfg.admin.token === undefined) {
    ctx.addIssue({ code: 'custom', path: ['admin', 'token'], message: 'admin.port needs admin.token: any local user (and any web page the operator opens) can reach a loopback port' });
  }
  const seen = new Set<string>();
  cfg.listeners.forEach((l, i) => {
    const key = `${l.address}:${l.port}`;
    if (l.port !== 0 && seen.has(key)) ctx.addIssue({ code: 'custom', path: ['listeners', i, 'port'], message: `${key} is used by another listener` });
    seen.add(key);
  });
});

export type ConfigInput = z.input<typeof configSchema>;
export type Config = z.output<typeof configSchema>;
export type ListenerConfig = Config['listeners'][number];
export type RouteConfig = Config['routes'][string];
export type SiteLimits = Config['delivery']['site'];
export type NamedSiteConfig = Config['delivery']['sites'][string];
export type TenantConfig = Config['tenants'][string];
