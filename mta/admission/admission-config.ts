/*
 * The admission settings (`admission`), with their defaults beside them: how known senders are
 * learned, how pressure is measured and turned into a level, what each level does to unknown
 * senders at the door, and the optional DNS responder that steers them by MX answers.
 *
 * Known senders are learned per client network, per authenticated user and per aligned sending
 * domain; pressure is a set of measured signals, each with a `busy` and an `overload` threshold
 * (the level is the worst signal's, entered after `rise` and left after `fall`). Trusted networks
 * and tenants' networks always count as known.
 */
import { z } from 'zod';
import { duration, hostname, ipAddress, domain } from '../../base/base-config.js';

const fraction = z.number().min(0).max(1);

/**
 * A signal's thresholds: at or past `busy` the node is busy, at or past `overload` overloaded, and
 * at or past `surge` (optional) overloaded at once, without waiting for `rise`: a reading that far
 * past the overload threshold is no blip. The defaults are parsed like given values (prefault), so
 * "150ms" becomes 150.
 */
const thresholds = <T extends z.ZodTypeAny>(value: T, busy: z.input<T>, overload: z.input<T>, surge?: (overload: number) => number) => z.strictObject({
  busy: value.prefault(busy as never),
  overload: value.prefault(overload as never),
  surge: value.optional() as z.ZodOptional<T>,
}).refine((t) => t.surge === undefined || (t.surge as number) >= (t.overload as number), { message: 'surge must be at or past overload', path: ['surge'] })
  .transform((t): { busy: z.output<T>; overload: z.output<T>; surge?: z.output<T> } => ({ ...t, surge: (t.surge ?? surge?.(t.overload as number)) as z.output<T> | undefined })).prefault({});

/** A signal where less is worse (free disk, free memory): at or below `busy` the node is busy. */
const floor = (busy: number, overload: number) => z.strictObject({
  busy: fraction.default(busy),
  overload: fraction.default(overload),
}).refine((t) => t.overload <= t.busy, 'overload must be at or below busy (less free is worse)').prefault({});

const ratio = z.number().positive();

const sendersSchema = z.strictObject({
  /** IPv4 clients are learned and judged by this many leading bits (a /24 by default). */
  ipv4Prefix: z.number().int().min(8).max(32).default(24),
  /** IPv6 clients likewise (a /64 by default). */
  ipv6Prefix: z.number().int().min(16).max(128).default(64),
  /** Counts halve over this time, so a sender that stopped sending fades. */
  halfLife: duration.prefault('14d'),
  /** A sender is known once it has this many (decayed) messages accepted clean ... */
  minClean: z.number().positive().default(3),
  /** ... and no more than this share of its messages refused or scored as spam. */
  maxBadShare: fraction.default(0.2),
  /** Entries not seen for this long are forgotten (pinned and blocked ones are kept). */
  forgetAfter: duration.prefault('90d'),
  /** Most entries kept; the least recently seen unpinned ones go first. */
  maxEntries: z.number().int().positive().default(200_000),
  /** What was learned is written to SQLite (and shared through Redis in a cluster) this often. */
  flushEvery: duration.prefault('5s'),
}).prefault({});

const pressureSchema = z.strictObject({
  /** How often the signals are read. */
  interval: duration.prefault('500ms'),
  /**
   * How often the cheap signals that count waiting clients (acceptQueue, sessions) are read besides,
   * for a reading at or past their `surge` threshold: a flood is met within this time, not `rise`
   * later, while its connections are still few in the queue ahead of known senders'. 0: surges
   * are looked for at each full read only.
   */
  surgeInterval: duration.prefault('100ms'),
  /** A level is entered once the signals have stayed at or past its threshold this long. */
  rise: duration.prefault('1s'),
  /** A level is left once the signals have stayed below its threshold (less `hysteresis`) this long. */
  fall: duration.prefault('15s'),
  /** How far below a threshold a signal must fall (as a share of the threshold) to count as below it. */
  hysteresis: fraction.default(0.2),
  /** The event loop's delay (p99 over the last interval). */
  eventLoopDelay: thresholds(duration, '150ms', '500ms'),
  /**
   * Sessions open on the admission listeners, as a share of their maxClients. The overload
   * threshold sits below 1 - reserve.sessions, so unknown senders alone can bring it about; the
   * surge (0.9, or overload if higher) is past what the reserve leaves unknown senders: they hold
   * all they may and more are being turned away.
   */
  sessions: thresholds(fraction, 0.5, 0.7, (overload) => Math.max(0.9, overload)),
  /** How long scans waited for a slot (p90 over the last interval). */
  scanWait: thresholds(duration, '500ms', '3s'),
  /**
   * Connections the kernel holds for the admission listeners that are not accepted yet (Linux):
   * while it grows everyone waits in it, known senders among the flood, before anyone is judged.
   * Idle, it stays near 0 (Node accepts every waiting connection at each turn of its loop), so
   * twice the overload threshold (400 by default) waiting is a surge.
   */
  acceptQueue: thresholds(z.number().int().positive(), 50, 200, (overload) => 2 * overload),
  /**
   * Messages waiting for a scan slot, as a multiple of `admission.scans`: the first sign of a flood,
   * before any wait has ended to be timed.
   */
  scanQueue: thresholds(ratio, 1, 3),
  /** How long scans took (p90 over the last interval). */
  scanLatency: thresholds(duration, '5s', '20s'),
  /** Spool fsync time (p99 over the last interval). */
  fsync: thresholds(duration, '100ms', '500ms'),
  /** Free space on the spool's file system, as a share of its size. */
  diskFree: floor(0.1, 0.05),
  /** Memory free, as a share of all this node may use: its cgroup's limit where one is set (a container, MemoryMax), else the system's. */
  memoryFree: floor(0.1, 0.05),
  /** MX queries to the DNS responder per second, as a multiple of their normal rate. */
  mxQueries: thresholds(ratio, 3, 6),
  /**
   * Connections to the admission listeners per second, those the door refuses included, as a
   * multiple of their normal rate: a flood keeps the level up while it lasts, even once the door
   * turns it away so fast that nothing else shows it. Its surge (4 × overload, 24 by default) is
   * looked for every surgeInterval over that span alone (the normal rate taken as at least 20 a
   * second there): a flood shows within a tenth of a second, before its connections crowd the
   * accept queue.
   */
  connections: thresholds(ratio, 3, 6, (overload) => 4 * overload),
  /** How long the normal rates of connections and MX queries are learned before their signals count (taken at start). */
  learnAfter: duration.prefault('5m'),
}).prefault({});

const dnsHost = z.strictObject({
  /** The MX host name in answers. */
  name: hostname,
  /** Its address (A or AAAA in the additional section). */
  address: ipAddress,
});

const dnsSchema = z.strictObject({
  /** Off by default: the provider's own DNS answers for its MX names. */
  enabled: z.boolean().default(false),
  /** Where the responder listens, on UDP and TCP alike. */
  address: ipAddress.default('127.0.0.1'),
  port: z.number().int().min(0).max(65535).default(53),
  /** Domains whose MX the responder answers (default: every tenant's domains). */
  domains: z.array(domain).optional(),
  /** TTL of every answer: short, so a change of level reaches senders soon. */
  ttl: duration.prefault('30s'),
  /** The nodes that serve known senders (in a cluster, the live nodes are added and ordered by load). */
  primary: z.array(dnsHost).default([]),
  /** The nodes that take unknown senders under high load (the overflow group); none: they are told to retry later. */
  overflow: z.array(dnsHost).default([]),
  /**
   * Addresses this node also answers SMTP on, handed out one per resolver so the MTA that then
   * connects can be paired with the resolver that asked (the listener takes them all); none:
   * resolvers and MTAs are paired by timing.
   */
  pairingAddresses: z.array(ipAddress).default([]),
  /** An MTA connecting within this time of a resolver's answer is paired with it. */
  pairingWindow: duration.prefault('30s'),
}).prefault({});

export const admissionSchema = z.strictObject({
  /**
   * on: unknown senders are delayed, limited and deferred by level; observe: everything is learned,
   * measured and counted (as `would_*`) but nobody is treated differently; off: none of it.
   */
  mode: z.enum(['on', 'observe', 'off']).default('on'),
  /** Listeners whose clients are admitted by level (default: every mx listener). */
  listeners: z.array(z.string().min(1)).optional(),
  senders: sendersSchema,
  pressure: pressureSchema,
  /** Shares kept for known senders at every level: unknown ones never take the last of them. */
  reserve: z.strictObject({
    /** Of each admission listener's maxClients. */
    sessions: z.number().min(0).max(0.9).default(0.2),
    /** Of `scans`. */
    scans: z.number().min(0).max(0.9).default(0.25),
  }).prefault({}),
  /**
   * Known senders' connections wait in an accept queue of their own, which the kernel picks by
   * their source address (Linux; one process, not under --workers): a flood in the other queue
   * does not hold them up.
   */
  knownQueue: z.boolean().default(true),
  /**
   * Connections waiting in a known queue's general queue (unknown senders' only) at which its guard,
   * a thread that looks every 5 ms (20 ms while it finds the queue empty), sends everyone neither known nor blocked to be refused at the
   * socket and the level to overload, without waiting for the event loop (with overload.refuse:
   * connect; 0: no guard). Idle, Node leaves that queue near empty at every turn of its loop. Where
   * the normal connection rate (the last ten seconds' while it is being learned) brings more than
   * this in a quarter of a second, the guard waits for that many instead (in steps of 16, up to 8
   * times this): a busy node's loop may stall that long.
   */
  knownQueueGuard: z.number().int().min(0).default(16),
  /** Most messages scanned at once; more wait for a slot (known senders' first). */
  scans: z.number().int().positive().default(32),
  /**
   * How many unknown senders' messages the engines read at once: as many as they take without a
   * queue of their own, found from the scans' lengths, so that a known sender's message never waits
   * inside an engine behind a flood's (queue/accept/accept-slots-limit.ts).
   */
  unknownScans: z.strictObject({
    /** Fewest at once, whatever the engines' latency; also where the limit starts. */
    floor: z.number().int().min(1).default(4),
    /**
     * A scan longer than this multiple of the quickest of its size in the last minute shows the
     * engines queueing, and the limit shrinks; 0: no limit but the slots the reserve leaves.
     */
    tolerance: z.number().refine((n) => n === 0 || n >= 1.2, 'must be 0 (no limit) or at least 1.2').default(2),
  }).prefault({}),
  /** What unknown senders get while the node is busy. */
  busy: z.strictObject({
    /** Wait before the greeting; a client that talks first is refused (pregreet). */
    greetingDelay: duration.prefault('3s'),
    /** Most simultaneous connections from one unknown network. */
    maxConnections: z.number().int().min(1).default(2),
    /** Most MAIL FROM commands per minute from one unknown network. */
    messageRate: z.number().int().min(1).default(30),
  }).prefault({}),
  overload: z.strictObject({
    /**
     * connect: 421 4.7.0 before the greeting; rcpt: greeted, then 451 4.7.1 at each RCPT. Either
     * way, sessions greeted before the level rose get 451 4.7.1 at their next RCPT.
     */
    refuse: z.enum(['connect', 'rcpt']).default('connect'),
  }).prefault({}),
  dns: dnsSchema,
}).prefault({});

export type AdmissionConfig = z.output<typeof admissionSchema>;
export type PressureConfig = AdmissionConfig['pressure'];
export type SendersConfig = AdmissionConfig['senders'];
export type DnsResponderConfig = AdmissionConfig['dns'];
