/*
 * The traffic metrics an operator alerts on: mail in, mail out, the queue's depth, the scans.
 * Registered here (mta-metrics.ts calls `trafficMetrics`); everything else only calls the hooks.
 *
 * Takes: events as they happen, from the composition root (mta-daemon.ts): the listeners'
 *   connections, transactions and messages (ingress/ingress-server.ts), each delivery attempt's
 *   outcome per recipient (queue/index.ts `onAttempt`), each scan (the accept step, `onScan`),
 *   each outbound session opened (delivery/ `onSession`); the queue's depth per tenant and state
 *   (queue/queue-depth.ts: an indexed read in a thread of its own when collected, cached there).
 * Gives (every label set bounded: mta-metrics-labels.ts):
 *   ichidan_connections_total{listener}                         connections received
 *   ichidan_connections_refused_total{listener,reason}          refused before the greeting
 *   ichidan_transactions_total{listener}                        MAIL FROM commands received
 *   ichidan_transactions_refused_total{listener,reason}         MAIL FROM refused
 *   ichidan_messages_total{listener,tenant,outcome,reason}      DATA ended: accepted, quarantined,
 *                                                               refused or incomplete (reason '' when accepted)
 *   ichidan_deliveries_total{tenant,site,outcome}               recipients delivered, deferred, bounced
 *   ichidan_deferrals_total{tenant,class}                       deferrals by class (queue/queue-classify.ts)
 *   ichidan_queue_recipients{tenant,state}                      recipients queued or held
 *   ichidan_queue_oldest_seconds{tenant,state}                  age of the oldest of them
 *   ichidan_scan_seconds{engine}                                each engine's scan time (histogram)
 *   ichidan_scan_verdicts_total{engine,verdict}                 clean, spam, infected, violation, unscannable, error, skipped
 *   ichidan_outbound_sessions_total{site,tls}                   sessions opened, by TLS protocol ('none' in plaintext)
 */
import { Counter, Gauge, Histogram, type Registry } from 'prom-client';
import type { SmtpReply } from '../base/base-reply.js';
import type { ScanRecord } from '../engines/engines-records.js';
import type { AttemptEvent, DepthRow } from '../queue/index.js';
import type { OutboundSession } from '../delivery/index.js';
import { replyReason, SiteLabels, tenantLabel } from './mta-metrics-labels.js';

/** What the listeners report (ingress/ingress-server.ts calls these). */
export interface IngressEvents {
  connection(listener: string): void;
  connectionRefused(listener: string, reply: SmtpReply): void;
  transaction(listener: string): void;
  transactionRefused(listener: string, reply: SmtpReply): void;
  /** The end of DATA; `reply` null when the message was accepted. */
  message(listener: string, tenant: string | null, outcome: 'accepted' | 'quarantined' | 'refused' | 'incomplete', reply: SmtpReply | null, scanned: boolean): void;
}

export interface TrafficHooks {
  ingress: IngressEvents;
  attempt(e: AttemptEvent): void;
  scan(record: ScanRecord): void;
  session(s: OutboundSession): void;
}

export interface TrafficSources {
  /** The configured tenants (a reload changes them). */
  tenants(): Readonly<Record<string, unknown>>;
  /** The queue's depth per tenant and state (read off the main thread, cached there). */
  depth(): Promise<DepthRow[]>;
}

const SCAN_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30];

export function trafficMetrics(registers: Registry[], sources: TrafficSources): TrafficHooks {
  const tenant = (t: string | null) => tenantLabel(sources.tenants(), t);
  const sites = new SiteLabels();
  const connections = new Counter({ name: 'ichidan_connections_total', help: 'SMTP connections received, per listener', labelNames: ['listener'], registers });
  const connectionsRefused = new Counter({
    name: 'ichidan_connections_refused_total', help: 'SMTP connections refused before the greeting, per listener and reason (the reply\'s name)', labelNames: ['listener', 'reason'], registers,
  });
  const transactions = new Counter({ name: 'ichidan_transactions_total', help: 'MAIL FROM commands received, per listener', labelNames: ['listener'], registers });
  const transactionsRefused = new Counter({
    name: 'ichidan_transactions_refused_total', help: 'MAIL FROM commands refused, per listener and reason (the reply\'s name)', labelNames: ['listener', 'reason'], registers,
  });
  const messages = new Counter({
    name: 'ichidan_messages_total', help: 'Messages whose DATA ended, per listener, tenant (the first recipient\'s), outcome (accepted, quarantined, refused, incomplete) and reason', labelNames: ['listener', 'tenant', 'outcome', 'reason'], registers,
  });
  const deliveries = new Counter({
    name: 'ichidan_deliveries_total', help: 'Recipients attempted, by tenant, destination site and outcome (delivered, deferred, bounced)', labelNames: ['tenant', 'site', 'outcome'], registers,
  });
  const deferrals = new Counter({
    name: 'ichidan_deferrals_total', help: 'Recipients deferred, by tenant and the class of the reply (bad-mailbox, bad-domain, policy, spam-block, spam-complaint, quota, too-big, other)', labelNames: ['tenant', 'class'], registers,
  });
  new Gauge({
    name: 'ichidan_queue_recipients', help: 'Recipients in the queue, by tenant and state (queued, held)', labelNames: ['tenant', 'state'], registers,
    async collect() {
      const rows = await sources.depth().catch(() => []);
      this.reset();
      for (const [key, row] of depthByLabel(rows, tenant)) this.set(key, row.recipients);
    },
  });
  new Gauge({
    name: 'ichidan_queue_oldest_seconds', help: 'Age of the oldest message in the queue, by tenant and state', labelNames: ['tenant', 'state'], registers,
    async collect() {
      const rows = await sources.depth().catch(() => []);
      this.reset();
      const now = Date.now();
      for (const [key, row] of depthByLabel(rows, tenant)) this.set(key, Math.max(0, (now - row.oldest) / 1000));
    },
  });
  const scanTimes = new Histogram({ name: 'ichidan_scan_seconds', help: 'Time each engine took for one message', labelNames: ['engine'], buckets: SCAN_BUCKETS, registers });
  const verdicts = new Counter({ name: 'ichidan_scan_verdicts_total', help: 'Each engine\'s answers, by verdict', labelNames: ['engine', 'verdict'], registers });
  const sessions = new Counter({
    name: 'ichidan_outbound_sessions_total', help: 'Outbound SMTP sessions opened, by destination site and TLS protocol (none: plaintext)', labelNames: ['site', 'tls'], registers,
  });
  return {
    ingress: {
      connection: (listener) => connections.inc({ listener }),
      connectionRefused: (listener, reply) => connectionsRefused.inc({ listener, reason: replyReason(reply) }),
      transaction: (listener) => transactions.inc({ listener }),
      transactionRefused: (listener, reply) => transactionsRefused.inc({ listener, reason: replyReason(reply) }),
      message: (listener, t, outcome, reply, scanned) => messages.inc({ listener, tenant: tenant(t), outcome, reason: reply ? replyReason(reply, scanned) : '' }),
    },
    attempt: (e) => {
      const t = tenant(e.tenant);
      deliveries.inc({ tenant: t, site: sites.label(e.site), outcome: e.outcome });
      if (e.outcome === 'deferred') deferrals.inc({ tenant: t, class: e.class ?? 'other' });
    },
    scan: (record) => {
      for (const run of record.runs) {
        verdicts.inc({ engine: run.engine, verdict: run.status });
        if (run.status !== 'skipped') scanTimes.observe({ engine: run.engine }, run.ms / 1000);
      }
    },
    session: (s) => sessions.inc({ site: sites.label(s.site), tls: s.tls?.protocol ?? 'none' }),
  };
}

/** Rows summed per label set: tenants no longer configured count together as `_other`. */
function depthByLabel(rows: DepthRow[], tenant: (t: string) => string): Map<{ tenant: string; state: string }, { recipients: number; oldest: number }> {
  const byKey = new Map<string, { key: { tenant: string; state: string }; recipients: number; oldest: number }>();
  for (const r of rows) {
    const key = { tenant: tenant(r.tenant), state: r.state };
    const id = `${key.tenant}\u0000${key.state}`;
    const have = byKey.get(id);
    if (have) {
      have.recipients += r.recipients;
      have.oldest = Math.min(have.oldest, r.oldest);
    } else {
      byKey.set(id, { key, recipients: r.recipients, oldest: r.oldest });
    }
  }
  return new Map([...byKey.values()].map((v) => [v.key, v]));
}
