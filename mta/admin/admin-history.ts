/*
 * What the dashboard's overview charts: the process's counters sampled into bounded rings.
 *
 * Takes: the process's counters as the metrics count them (mta/mta-metrics-traffic.ts: messages
 *   accepted or quarantined, `ichidan_messages_total`; recipients delivered, deferred, bounced,
 *   `ichidan_deliveries_total`), the queue's depth per tenant and destination domain
 *   (queue/queue-depth-domains.ts, read in a thread of its own), each domain's site (the egress), and the pressure level
 *   (admission). Every `admin.dashboard.sample` (default 10 s) one point; every minute one more
 *   into the day's ring; the first point counts what happened since the start.
 * Gives: `GET /v1/history?range=hour|day` → {step (s), points: [{t, accepted, delivered,
 *   deferred, bounced (counts within the step), level (0 normal, 1 busy, 2 overload; the worst
 *   seen in the step), tenants {name: depth}, sites {key: depth}}]}, oldest first. The hour's
 *   ring keeps 1 h at the sample step, the day's 24 h at one a minute; nothing else grows.
 * Tenants and sites are at most MAX_SERIES each, the deepest; the rest count together as "other".
 * Nothing is stored: a restart begins a new history.
 */
import type { Registry } from 'prom-client';
import type { Queue } from '../../queue/index.js';
import { rank } from '../admission/admission-levels.js';
import type { AdmissionStatus } from '../admission/admission-pressure.js';
import type { Config } from '../mta-config-schema.js';
import { BadRequest, type AdminRoute } from './admin-request.js';

/** Series kept per point for tenants and for sites, the deepest first. */
const MAX_SERIES = 8;
const DAY_STEP_MS = 60_000;

export interface HistoryPoint {
  t: number;
  accepted: number;
  delivered: number;
  deferred: number;
  bounced: number;
  level: number;
  tenants: Record<string, number>;
  sites: Record<string, number>;
}

export interface HistoryTarget {
  readonly config: Pick<Config, 'admin'>;
  readonly queue: Pick<Queue, 'depthByDomain' | 'egress'>;
  readonly metrics: Pick<Registry, 'getSingleMetric'>;
  admissionStatus(): AdmissionStatus;
}

type Flow = Record<(typeof FLOWS)[number], number>;
const NOTHING: Flow = { accepted: 0, delivered: 0, deferred: 0, bounced: 0 };
const FLOWS = ['accepted', 'delivered', 'deferred', 'bounced'] as const;

/** A ring of at most `size` points, oldest first when read. */
class Ring {
  readonly #points: HistoryPoint[] = [];
  constructor(readonly stepMs: number, private readonly size: number) {}
  push(p: HistoryPoint): void {
    this.#points.push(p);
    if (this.#points.length > this.size) this.#points.shift();
  }
  get points(): HistoryPoint[] {
    return [...this.#points];
  }
}

export class History {
  #hour: Ring;
  readonly #day = new Ring(DAY_STEP_MS, 24 * 60);
  #timer: NodeJS.Timeout | null = null;
  #last: Flow;
  #dayFrom: Flow;
  #dayAt = Date.now();
  #dayLevel = 0;

  constructor(private readonly target: HistoryTarget) {
    this.#last = NOTHING;
    this.#dayFrom = NOTHING;
    this.#hour = this.#hourRing();
  }

  #hourRing(): Ring {
    const step = this.target.config.admin.dashboard.sample;
    return new Ring(step, Math.ceil(3_600_000 / step));
  }

  start(): void {
    this.stop();
    if (this.#hour.stepMs !== this.target.config.admin.dashboard.sample) this.#hour = this.#hourRing();
    // A point that could not be taken is left out: the counters are totals, the next point counts what it missed.
    this.#timer = setInterval(() => void this.sample().catch(() => undefined), this.#hour.stepMs);
    this.#timer.unref();
  }

  stop(): void {
    if (this.#timer) clearInterval(this.#timer);
    this.#timer = null;
  }

  /** Takes one point now (the timer's work; a test may call it). */
  async sample(now = Date.now()): Promise<void> {
    const flow = await this.#flow();
    const depth = await this.#depth();
    const level = this.#level();
    this.#hour.push({ t: now, ...since(this.#last, flow), level, ...depth });
    this.#last = flow;
    this.#dayLevel = Math.max(this.#dayLevel, level);
    if (now - this.#dayAt >= DAY_STEP_MS) {
      this.#day.push({ t: now, ...since(this.#dayFrom, flow), level: this.#dayLevel, ...depth });
      this.#dayFrom = flow;
      this.#dayAt = now;
      this.#dayLevel = 0;
    }
  }

  async #flow(): Promise<Flow> {
    const [messages, deliveries] = await Promise.all([
      byLabel(this.target.metrics, 'ichidan_messages_total', 'outcome'),
      byLabel(this.target.metrics, 'ichidan_deliveries_total', 'outcome'),
    ]);
    return {
      accepted: (messages.accepted ?? 0) + (messages.quarantined ?? 0),
      delivered: deliveries.delivered ?? 0,
      deferred: deliveries.deferred ?? 0,
      bounced: deliveries.bounced ?? 0,
    };
  }

  #level(): number {
    const status = this.target.admissionStatus();
    return status.measuring ? rank(status.level) : 0;
  }

  async #depth(): Promise<Pick<HistoryPoint, 'tenants' | 'sites'>> {
    const { tenants, domains } = await this.target.queue.depthByDomain();
    const bySite = new Map<string, number>();
    for (const [domain, n] of Object.entries(domains)) {
      const site = this.target.queue.egress.site(domain);
      // A domain whose route is still being looked up counts under its own name meanwhile.
      const key = site instanceof Promise ? `domain:${domain}` : site.key;
      bySite.set(key, (bySite.get(key) ?? 0) + n);
    }
    return { tenants: deepest(Object.entries(tenants), MAX_SERIES), sites: deepest([...bySite], MAX_SERIES) };
  }

  points(range: 'hour' | 'day'): { step: number; points: HistoryPoint[] } {
    const ring = range === 'hour' ? this.#hour : this.#day;
    return { step: ring.stepMs / 1000, points: ring.points };
  }
}

/** The `max` deepest entries, the rest summed as `other`: a point's size does not grow with the tenants or sites. */
function deepest(entries: Array<[string, number]>, max: number): Record<string, number> {
  const ranked = entries.sort((a, b) => b[1] - a[1]);
  const kept: Record<string, number> = Object.fromEntries(ranked.slice(0, max));
  const rest = ranked.slice(max).reduce((sum, [, n]) => sum + n, 0);
  if (rest > 0) kept.other = rest;
  return kept;
}

/** A counter's values summed by one label (nothing when it is not registered). */
async function byLabel(registry: HistoryTarget['metrics'], name: string, label: string): Promise<Record<string, number>> {
  const metric = registry.getSingleMetric(name);
  if (!metric) return {};
  const sums: Record<string, number> = {};
  for (const v of (await metric.get()).values) {
    const key = String(v.labels[label] ?? '');
    sums[key] = (sums[key] ?? 0) + v.value;
  }
  return sums;
}

function since(from: Flow, to: Flow): Pick<HistoryPoint, (typeof FLOWS)[number]> {
  const d = { accepted: 0, delivered: 0, deferred: 0, bounced: 0 };
  for (const k of FLOWS) d[k] = to[k] - from[k];
  return d;
}

export function historyRoute(history: History): AdminRoute<unknown> {
  return async ({ method, path, query }) => {
    if (method !== 'GET' || path !== '/v1/history') return null;
    const range = query.get('range') ?? 'hour';
    if (range !== 'hour' && range !== 'day') throw new BadRequest('"range" is hour or day');
    return [200, history.points(range)];
  };
}
