/*
 * The ingress's settings, with their defaults beside them: `listeners`, `tls`, `limits` (the edge's
 * own, with the message limits of the accept step, queue/accept/accept-config.ts), `auth`, `users`
 * and `trustedNetworks`. The root schema (mta/mta-config-schema.ts) assembles them and checks what
 * spans sections (a user's tenant, two listeners on one port).
 */
import { z } from 'zod';
import { cidr, duration, ipAddress } from '../../base/base-config.js';
import { messageLimitFields } from '../../queue/accept/accept-config.js';

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
  /**
   * Connections the kernel queues before Ichidan accepts them (listen backlog; Linux caps it at
   * net.core.somaxconn). A full queue drops new connections' SYNs, and their clients, known
   * senders too, wait a second or more to try again: a flood needs room here.
   */
  backlog: z.number().int().min(1).max(65535).default(4096),
  /** This listener's own certificate and key (PEM files), offered instead of `tls.cert`/`tls.key`; reloaded live. */
  cert: z.string().min(1).optional(),
  key: z.string().min(1).optional(),
  /**
   * Behind a TCP load balancer: connections from `from` begin with a PROXY protocol header giving
   * the client's own address, which then counts everywhere (policy, tenants, limits, SPF, Received,
   * logs); from them a connection without one is refused, and a header from anyone else is too.
   */
  proxyProtocol: z.strictObject({
    /** The load balancers' addresses or networks. */
    from: z.array(cidr).min(1, 'at least one load balancer address'),
    /** v1 (text), v2 (binary) or any. */
    version: z.enum(['v1', 'v2', 'any']).default('any'),
    /** The whole header must arrive within this (Postfix's smtpd_upstream_proxy_timeout); else 421 and closed. */
    timeout: duration.refine((ms) => ms > 0, 'a duration above 0, such as "5s"').prefault('5s'),
  }).optional(),
}).superRefine((l, ctx) => {
  if ((l.cert === undefined) !== (l.key === undefined)) {
    ctx.addIssue({ code: 'custom', path: [l.cert === undefined ? 'cert' : 'key'], message: 'a listener\'s cert and key go together' });
  }
  if (l.cert !== undefined && l.tls === 'none') ctx.addIssue({ code: 'custom', path: ['cert'], message: 'this listener has tls: none and offers no certificate' });
  if (l.proxyProtocol && l.role === 'proxy') {
    ctx.addIssue({ code: 'custom', path: ['proxyProtocol'], message: 'a proxy listener learns where connections go from the kernel; PROXY headers are for mx and submission listeners' });
  }
});

export const listenersSchema = z.array(listener).min(1).default([
  { name: 'mx', role: 'mx', port: 2525 },
  { name: 'submission', role: 'submission', port: 2587 },
] as never);

/** A certificate name a client may ask for by SNI: a host name, or "*.example.com" for the names one level below. */
const sniName = z.string().regex(/^(\*\.)?[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*\.?$/i);

const certificatePair = z.strictObject({ cert: z.string().min(1), key: z.string().min(1) });

export const tlsSchema = z.strictObject({
  /**
   * PEM certificate and key files, offered by every listener without its own; when both are absent
   * a self-signed pair is made in dataDir/tls. Re-read at every reload: a renewed pair needs no restart.
   */
  cert: z.string().min(1).optional(),
  key: z.string().min(1).optional(),
  /** Pairs picked by the name a client asks for (SNI), on every listener: { "mx.example.com": { cert, key } }. */
  sni: z.record(z.string(), certificatePair).default({}),
}).superRefine((t, ctx) => {
  if ((t.cert === undefined) !== (t.key === undefined)) {
    ctx.addIssue({ code: 'custom', path: [], message: 'tls.cert and tls.key go together' });
  }
  for (const name of Object.keys(t.sni)) {
    if (!sniName.safeParse(name).success) ctx.addIssue({ code: 'custom', path: ['sni', name], message: 'a host name such as "mx.example.com" or "*.example.com"' });
  }
}).prefault({});

export const limitsSchema = z.strictObject({
  ...messageLimitFields,
  /** Most recipients per transaction (452 beyond). */
  maxRecipients: z.number().int().positive().default(100),
  /** Idle time allowed between commands. */
  commandTimeout: duration.prefault('5m'),
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
}).prefault({});

/** Failed AUTH attempts, counted per client address and per account (Dovecot's auth penalty, fail2ban's ban). */
export const authSchema = z.strictObject({
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
  /** Checks waiting for a thread (or for Dovecot's answer); past this, 454 4.7.0. */
  queue: z.number().int().positive().default(64),
  /** Where passwords are checked: `users` below (yaml), or Dovecot's auth service (ingress-auth-dovecot.ts). */
  backend: z.discriminatedUnion('type', [
    z.strictObject({ type: z.literal('yaml') }),
    z.strictObject({
      type: z.literal('dovecot'),
      /** Dovecot's auth client socket (service auth { unix_listener … }), or "host:port" of an inet_listener. */
      socket: z.string().min(1).refine((s) => s.startsWith('/') || /^(?:\[[^\]]+\]|[^:/]+):\d{1,5}$/.test(s), 'an absolute path of a unix socket, or "host:port"'),
      /** An answer later than this is a temporary failure (454 4.7.0). */
      timeout: duration.prefault('5s'),
      /** The tenant of a login whose domain is not in `domains`. */
      tenant: z.string().min(1).optional(),
      /** The tenant of a login by its domain (the part after "@"). */
      domains: z.record(z.string().transform((d) => d.toLowerCase()), z.string().min(1)).default({}),
    }),
  ], { error: (i) => (i.code === 'invalid_union' ? 'must be "yaml" or "dovecot"' : undefined) }).prefault({ type: 'yaml' }),
}).prefault({});

const user = z.strictObject({
  /** The AUTH user name. */
  name: z.string().min(1),
  /** A bcrypt hash ("$2b$..."), as printed by `ichidan hash-password`. */
  password: z.string().regex(/^\$2[aby]\$\d\d\$[./A-Za-z0-9]{53}$/, 'a bcrypt hash ("$2b$..."); make one with `ichidan hash-password`'),
  /** The tenant whose queues this user's mail goes to. */
  tenant: z.string().min(1),
});

export const usersSchema = z.array(user).default([]);

/** Networks that may relay anywhere without AUTH; their mail is the hosting tenant's, or `_relay` for other domains. */
export const trustedNetworksSchema = z.array(cidr).default([]);

export type ListenerConfig = z.output<typeof listener>;
export type LimitsConfig = z.output<typeof limitsSchema>;
export type AuthConfig = z.output<typeof authSchema>;
export type AuthBackendConfig = AuthConfig['backend'];
