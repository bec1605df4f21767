/*
 * The configuration schema: the one source of truth for what an Ichidan YAML file may say.
 *
 * Every object is strict (an unknown key is an error naming its path), every field carries its
 * default beside it, and durations ("30s", "5m", "4h", "5d") and sizes ("25MB") are parsed here so
 * the rest of the process only ever sees milliseconds and bytes. The TypeScript types of the
 * running configuration are derived from this schema (`Config`), never written by hand.
 */
import { z } from 'zod';
import { engineSchema, scanningSchema, tenantScanningSchema } from '../engines/engines-config.js';
import { cidr, domain, duration, hostname, ipAddress, size } from '../base/base-config.js';
import { deliverySchema, dnsSchema, routesSchema } from '../delivery/delivery-config.js';
import { queueSchema, tenantEgressSchema } from '../queue/queue-config.js';
import { proxySchema } from './proxy/proxy-config.js';

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
  egress: tenantEgressSchema,
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
  dns: dnsSchema,
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
     * The structure a message may have (queue/accept/accept-structure.ts). Past any of them the message follows
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
  queue: queueSchema,
  delivery: deliverySchema,
  routes: routesSchema,
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
  proxy: proxySchema,
  /** Scanning engines, run in parallel on every message before the reply to DATA (empty: no scanning). */
  engines: z.array(engineSchema).default([]),
  /** How the engines' results make one verdict. */
  scanning: scanningSchema.prefault({}),
}).superRefine((cfg, ctx) => {
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
export type TenantConfig = Config['tenants'][string];
