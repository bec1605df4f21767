/*
 * Experiment 3 of the comparison benchmark: a connection cap at the destination and fairness
 * between tenants behind one relay.
 *
 * The MX of capped.example is a real Postfix (a private instance on 127.0.0.34) with
 * `smtpd_client_connection_count_limit = 10` and no exceptions, so an 11th simultaneous connection
 * from the relay's address gets `421 4.7.0 Error: too many connections`; it discards what it
 * accepts. Tenants A, B and C (MUAs on 127.0.0.21-23, five reused connections each) submit N
 * messages each at once through the relay. Relay variants: Postfix with its defaults, Postfix with
 * `default_destination_concurrency_limit = 10` (what an operator would set), Ichidan with
 * `delivery.sites.capped.maxConnections: 10`.
 *
 * Takes: the variant, N, a time limit, and how long a run may go without a new arrival at the MX
 * once everything is submitted (Postfix retries a refused message only after minimal_backoff_time,
 * 300 s by default: past the stall limit the run ends with what arrived).
 * Gives: per tenant delivered, completion time (its first submission to the MX's log showing its
 * last message, polled every 100 ms) and throughput; Jain's index over the three throughputs;
 * refusals the MX logged; the peak simultaneous connections from one client at the MX (sampled
 * from /proc/net/tcp every 20 ms, so refused ones count while they last); connections the MX
 * served (its "connect from" lines less the refused ones) and messages per connection; deferrals
 * the relay logged.
 */
import { onCleanup, sleep } from './bench-cleanup.js';
import { LogTail } from './bench-logtail.js';
import { sampleConnections } from './bench-proc.js';
import { startPostfix } from './bench-postfix.js';
import { startRelay, TENANT_ADDRESS, TENANTS, type RelayKind, type RelayPlan, type Tenant } from './bench-relays.js';
import { jain } from './bench-stats.js';
import { Submitter } from './bench-submit.js';

export const MX_ADDRESS = '127.0.0.34';
const CONNECTION_CAP = 10;

export interface FairnessVariant { name: string; relay: RelayKind; plan: Omit<RelayPlan, 'routes'> }

export const FAIRNESS_VARIANTS: FairnessVariant[] = [
  { name: 'Postfix (defaults)', relay: 'postfix', plan: {} },
  { name: 'Postfix (destination concurrency 10)', relay: 'postfix', plan: { postfix: { default_destination_concurrency_limit: String(CONNECTION_CAP) } } },
  { name: 'Ichidan (site maxConnections 10)', relay: 'ichidan', plan: { ichidanDelivery: { sites: { capped: { domains: ['capped.example'], maxConnections: CONNECTION_CAP } } } } },
];

export interface TenantOutcome { submitted: number; delivered: number; seconds: number; rate: number }

export interface FairnessResult {
  variant: string;
  relay: RelayKind;
  perTenant: Record<Tenant, TenantOutcome>;
  /** Tenants that got everything delivered: the slowest one's completion time; NaN if any did not. */
  seconds: number;
  jain: number;
  refused: number;
  peakConnections: number;
  connections: number;
  messagesPerConnection: number;
  relayDeferred: number;
}

/** The capped MX: Postfix accepting mail for capped.example only, and discarding it. */
async function startCappedMx() {
  return startPostfix('mx', MX_ADDRESS, {
    mynetworks: `${MX_ADDRESS}/32`,
    relay_domains: 'capped.example',
    smtpd_relay_restrictions: 'permit_auth_destination, reject',
    relay_transport: 'discard:capped MX of the benchmark',
    smtpd_client_connection_count_limit: String(CONNECTION_CAP),
    // By default $mynetworks is exempt; the relays connect from 127.0.0.1, but nothing should be.
    smtpd_client_event_limit_exceptions: '',
  });
}

export async function fairnessRun(variant: FairnessVariant, perTenant: number, timeoutMs: number, stallMs: number): Promise<FairnessResult> {
  const mx = await startCappedMx();
  const last: Record<Tenant, number> = { a: 0, b: 0, c: 0 };
  const delivered: Record<Tenant, number> = { a: 0, b: 0, c: 0 };
  // Connections are counted as they open: idle ones the relay keeps open log no disconnect before the run ends.
  let refused = 0, connections = 0, lastArrival = 0;
  const mxLog = new LogTail(mx.maillog, (line) => {
    const arrival = /postfix\/discard\[\d+\]: \w+: to=<([abc])\d+@capped\.example>/.exec(line);
    if (arrival) {
      const t = arrival[1] as Tenant;
      delivered[t]++;
      last[t] = lastArrival = Date.now();
      return;
    }
    if (line.includes('Connection concurrency limit exceeded')) refused++;
    else if (/\]: connect from /.test(line)) connections++;
  });
  const connectionsAtMx = sampleConnections(MX_ADDRESS, mx.port);
  const stopSampling = onCleanup(async () => { connectionsAtMx.stop(); });
  const relay = await startRelay(variant.relay, { ...variant.plan, routes: { 'capped.example': { host: MX_ADDRESS, port: mx.port } } });
  try {
    const submitters = TENANTS.map((t) => new Submitter(t, TENANT_ADDRESS[t], relay.port, 5));
    for (const s of submitters) s.submit(Array.from({ length: perTenant }, (_, i) => ({ seq: i + 1, to: `${s.tenant}${i + 1}@capped.example` })));
    const until = Date.now() + timeoutMs;
    await Promise.all(submitters.map((s) => s.drain(timeoutMs)));
    const accepted = submitters.reduce((n, s) => n + s.accepted.size, 0);
    lastArrival = Math.max(lastArrival, Date.now());
    const arrived = () => TENANTS.reduce((n, t) => n + delivered[t], 0);
    while (arrived() < accepted && Date.now() < until && Date.now() - lastArrival < stallMs) {
      relay.assertRunning();
      await sleep(100);
      mxLog.poll();
    }
    await sleep(500);
    mxLog.poll();
    relay.poll();
    const peakConnections = connectionsAtMx.stop();
    for (const s of submitters) await s.stop();
    const outcomes = {} as Record<Tenant, TenantOutcome>;
    for (const s of submitters) {
      const t = s.tenant as Tenant;
      const seconds = delivered[t] ? (last[t] - s.firstSubmission) / 1000 : NaN;
      outcomes[t] = { submitted: s.accepted.size, delivered: delivered[t], seconds, rate: delivered[t] ? delivered[t] / seconds : 0 };
    }
    const complete = TENANTS.every((t) => outcomes[t].delivered === perTenant);
    return {
      variant: variant.name, relay: variant.relay, perTenant: outcomes,
      seconds: complete ? Math.max(...TENANTS.map((t) => outcomes[t].seconds)) : NaN,
      jain: jain(TENANTS.map((t) => outcomes[t].rate)),
      refused, peakConnections, connections: connections - refused,
      messagesPerConnection: connections > refused ? arrived() / (connections - refused) : 0,
      relayDeferred: relay.deferred,
    };
  } finally {
    await stopSampling();
    await relay.stop();
    await mx.stop();
  }
}
