/*
 * Experiment 1 of the comparison benchmark: does one tenant's slow destination hold back the
 * others' mail through the relay?
 *
 * MX1-MX3 are sink servers (test/helpers/sink.ts, no STARTTLS offered) on 127.0.0.31-33 for
 * a.example, b.example and c.example. Every period tenants A and B (MUAs on 127.0.0.21 and .22, two
 * reused connections each) submit 10 messages each to MX1 and MX2, and tenant C (127.0.0.23, five
 * connections) a burst to MX3, for the given duration; C's MUA then stops, and A's and B's mail is
 * waited for (bounded). MX3 is either healthy or a tarpit (every reply after a delay). The relay is
 * Postfix with `qmgr_message_active_limit = 200` and otherwise its defaults, or Ichidan with its
 * defaults and the tenants by client network.
 *
 * Takes: the relay, whether MX3 is a tarpit, and the timings.
 * Gives: per tenant submitted, delivered, mean / p50 / p99 latency (the MX's 250 minus the MUA's
 * 250, both clocks in this process); a message still undelivered at the end counts with the time
 * it had waited so far, and the figure is then marked as a lower bound; per second, cumulative
 * messages per MX and mean latency per tenant, for the plots.
 */
import { startSink, type Sink } from '../test/helpers/sink.js';
import { sleep } from './bench-cleanup.js';
import { startRelay, TENANT_ADDRESS, TENANTS, type RelayKind, type Tenant } from './bench-relays.js';
import { mean, percentile } from './bench-stats.js';
import { Submitter } from './bench-submit.js';

const MX_ADDRESS: Record<Tenant, string> = { a: '127.0.0.31', b: '127.0.0.32', c: '127.0.0.33' };
const AB_BURST = 10;

export interface IsolationSettings { periodMs: number; durationMs: number; cBurst: number; tarpitMs: number; drainMs: number }

export interface TenantLatency {
  submitted: number;
  delivered: number;
  mean: number;
  p50: number;
  p99: number;
  /** Some messages were still undelivered: the figures are lower bounds. */
  censored: boolean;
}

export interface IsolationResult {
  relay: RelayKind;
  tarpit: boolean;
  perTenant: Record<Tenant, TenantLatency>;
  /** A's and B's latencies one by one (undelivered ones as waited so far), to pool repetitions. */
  samples: { a: number[]; b: number[] };
  /** Seconds since the first submission; per second, cumulative messages per MX and mean latency per tenant. */
  series: { t: number[]; received: Record<Tenant, number[]>; meanLatency: Record<Tenant, Array<number | null>> };
}

function tagOf(rcpt: string | undefined): { tenant: Tenant; seq: number } | undefined {
  const m = /^([abc])(\d+)@/.exec(rcpt ?? '');
  return m ? { tenant: m[1] as Tenant, seq: Number(m[2]) } : undefined;
}

function latencyFigures(submitter: Submitter, sink: Sink, end: number): { figures: TenantLatency; all: number[]; perMessage: Array<[number, number]> } {
  const perMessage: Array<[number, number]> = [];
  const arrived = new Set<number>();
  for (const m of sink.messages) {
    const tag = tagOf(m.rcptTo[0]);
    const acceptedAt = tag && tag.tenant === submitter.tenant ? submitter.accepted.get(tag.seq) : undefined;
    if (acceptedAt === undefined || arrived.has(tag!.seq)) continue;
    arrived.add(tag!.seq);
    perMessage.push([m.at, m.at - acceptedAt]);
  }
  const waited = [...submitter.accepted].filter(([seq]) => !arrived.has(seq)).map(([, at]) => end - at);
  const all = [...perMessage.map(([, ms]) => ms), ...waited].sort((x, y) => x - y);
  return {
    perMessage, all,
    figures: {
      submitted: submitter.accepted.size, delivered: arrived.size, censored: waited.length > 0,
      mean: Math.round(mean(all)), p50: Math.round(percentile(all, 0.5)), p99: Math.round(percentile(all, 0.99)),
    },
  };
}

export async function isolationRun(kind: RelayKind, tarpit: boolean, s: IsolationSettings): Promise<IsolationResult> {
  const sinks = {} as Record<Tenant, Sink>;
  try {
    for (const t of TENANTS) {
      sinks[t] = await startSink({ host: MX_ADDRESS[t], hideStartTls: true, ...(t === 'c' && tarpit ? { replyDelay: s.tarpitMs } : {}) });
    }
    const routes = Object.fromEntries(TENANTS.map((t) => [`${t}.example`, { host: MX_ADDRESS[t], port: sinks[t].port }]));
    const relay = await startRelay(kind, { routes, postfix: { qmgr_message_active_limit: '200' } });
    try {
      const submitters = {
        a: new Submitter('a', TENANT_ADDRESS.a, relay.port, 2),
        b: new Submitter('b', TENANT_ADDRESS.b, relay.port, 2),
        c: new Submitter('c', TENANT_ADDRESS.c, relay.port, 5),
      };
      const seq: Record<Tenant, number> = { a: 0, b: 0, c: 0 };
      const t0 = Date.now();
      for (let tick = 0; tick * s.periodMs < s.durationMs; tick++) {
        await sleep(t0 + tick * s.periodMs - Date.now());
        relay.assertRunning();
        for (const t of TENANTS) {
          const burst = t === 'c' ? s.cBurst : AB_BURST;
          submitters[t].submit(Array.from({ length: burst }, () => ({ seq: ++seq[t], to: `${t}${seq[t]}@${t}.example` })));
        }
      }
      await sleep(t0 + s.durationMs - Date.now());
      // C's MUA stops where the period ends; A's and B's are small and are let finish.
      await submitters.c.stop();
      await Promise.all([submitters.a.drain(s.drainMs), submitters.b.drain(s.drainMs)]);
      const until = Date.now() + s.drainMs;
      const arrived = (t: 'a' | 'b') => sinks[t].messages.length >= submitters[t].accepted.size;
      while (!(arrived('a') && arrived('b')) && Date.now() < until) {
        relay.assertRunning();
        await sleep(100);
      }
      const end = Date.now();
      await submitters.a.stop();
      await submitters.b.stop();

      const buckets = Math.ceil((end - t0) / 1000);
      const series: IsolationResult['series'] = {
        t: Array.from({ length: buckets }, (_, i) => i + 1),
        received: { a: [], b: [], c: [] },
        meanLatency: { a: [], b: [], c: [] },
      };
      const perTenant = {} as Record<Tenant, TenantLatency>;
      const samples: IsolationResult['samples'] = { a: [], b: [] };
      for (const t of TENANTS) {
        const { figures, all, perMessage } = latencyFigures(submitters[t], sinks[t], end);
        perTenant[t] = figures;
        if (t !== 'c') samples[t] = all;
        const counts = Array<number>(buckets).fill(0), sums = Array<number>(buckets).fill(0);
        for (const [at, ms] of perMessage) {
          const b = Math.min(buckets - 1, Math.floor((at - t0) / 1000));
          counts[b]++;
          sums[b] += ms;
        }
        let total = 0;
        series.received[t] = counts.map((n) => (total += n));
        series.meanLatency[t] = sums.map((sum, i) => (counts[i] ? Math.round(sum / counts[i]) : null));
      }
      return { relay: kind, tarpit, perTenant, samples, series };
    } finally {
      await relay.stop();
    }
  } finally {
    // A tarpit's sessions end with the relay, so the sinks close at once.
    await Promise.all(Object.values(sinks).map((sink) => sink.close()));
  }
}
