/*
 * The two relays under comparison behind one interface: a private Postfix instance or an Ichidan
 * child, listening on 127.0.0.1, routing each destination domain to a loopback host and port, and
 * fsyncing every message before its 250 (Postfix always does; Ichidan with its default
 * `queue.fsync: true`).
 *
 * Takes: which relay, static routes (domain → host and port), and settings that differ from
 * the defaults per experiment (Postfix main.cf lines; Ichidan's `delivery` and `cluster`
 * sections and start arguments such as --workers).
 * Gives: a Relay: its port, root pid (Postfix's master or the Ichidan process), folder, the
 * deliveries its log shows so far (each with the relay's own latency, end of DATA to the next
 * hop's 250, and the time a poll of the log first saw it: Postfix logs whole seconds only, so both
 * relays are timed by the poll), the deferrals it logged, and `stop()`.
 * Tenants are told apart by their MUA's address, 127.0.0.21-23 for A-C: Ichidan lists those as
 * tenants' networks; Postfix has no tenants and relays for 127.0.0.0/8.
 */
import { LogTail } from './bench-logtail.js';
import { startIchidan } from './bench-ichidan.js';
import { startPostfix, transportMap, type Route } from './bench-postfix.js';

export type RelayKind = 'postfix' | 'ichidan';

export const TENANT_ADDRESS = { a: '127.0.0.21', b: '127.0.0.22', c: '127.0.0.23' } as const;
export type Tenant = keyof typeof TENANT_ADDRESS;
export const TENANTS = Object.keys(TENANT_ADDRESS) as Tenant[];

export interface Delivery { latencyMs: number; seenAt: number }

export interface Relay {
  kind: RelayKind;
  port: number;
  rootPid: number;
  dir: string;
  deliveries: Delivery[];
  /** Delivery attempts that ended in a temporary failure. */
  readonly deferred: number;
  /** Reads what the log has added since the last call. */
  poll(): void;
  /** Throws if the relay has died. */
  assertRunning(): void;
  stop(): Promise<void>;
}

export interface RelayPlan {
  routes: Record<string, Route>;
  /** main.cf settings for Postfix beyond the base and the transport map. */
  postfix?: Record<string, string>;
  /** Ichidan's `delivery` section. */
  ichidanDelivery?: Record<string, unknown>;
  /** Extra node options for the Ichidan process (e.g. --cpu-prof). */
  ichidanNodeArgs?: string[];
  /** Ichidan's `cluster` section (e.g. the Redis workers share). */
  ichidanCluster?: Record<string, unknown>;
  /** Arguments after `ichidan start -c FILE` (e.g. --workers 2). */
  ichidanArgs?: string[];
}

const POSTFIX_SENT = / delay=([\d.]+),.* status=sent /;
const POSTFIX_DEFERRED = / status=deferred /;

export async function startRelay(kind: RelayKind, plan: RelayPlan): Promise<Relay> {
  const deliveries: Delivery[] = [];
  let deferred = 0;
  if (kind === 'postfix') {
    const pf = await startPostfix('relay', '127.0.0.1', { transport_maps: transportMap(plan.routes), ...plan.postfix });
    const tail = new LogTail(pf.maillog, (line) => {
      const m = POSTFIX_SENT.exec(line);
      if (m) deliveries.push({ latencyMs: Number(m[1]) * 1000, seenAt: Date.now() });
      else if (POSTFIX_DEFERRED.test(line)) deferred++;
    });
    return {
      kind, port: pf.port, rootPid: pf.masterPid, dir: pf.dir, deliveries,
      get deferred() { return deferred; },
      poll: () => tail.poll(),
      assertRunning: () => {
        try { process.kill(pf.masterPid, 0); } catch { throw new Error('the Postfix master has exited'); }
      },
      stop: () => pf.stop(),
    };
  }
  const ich = await startIchidan({
    hostname: 'relay.ichidan.bench.test',
    log: { level: 'info' },
    trustedNetworks: ['127.0.0.1/32'],
    tenants: Object.fromEntries(TENANTS.map((t) => [t, { networks: [`${TENANT_ADDRESS[t]}/32`] }])),
    routes: plan.routes,
    ...(plan.ichidanDelivery ? { delivery: plan.ichidanDelivery } : {}),
    ...(plan.ichidanCluster ? { cluster: plan.ichidanCluster } : {}),
  }, plan.ichidanNodeArgs, plan.ichidanArgs);
  const tail = new LogTail(ich.logFile, (line) => {
    if (line.includes('"verdict":"delivered"')) deliveries.push({ latencyMs: (JSON.parse(line) as { delay: number }).delay, seenAt: Date.now() });
    else if (line.includes('"verdict":"deferred"')) deferred++;
  });
  return {
    kind, port: ich.port, rootPid: ich.pid, dir: ich.dir, deliveries,
    get deferred() { return deferred; },
    poll: () => tail.poll(),
    assertRunning: () => ich.assertRunning(),
    stop: () => ich.stop(),
  };
}
