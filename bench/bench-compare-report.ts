/*
 * The comparison benchmark's report: the headline table with the targets and whether each is met,
 * then a table per experiment, the plots and the profile summary, in Markdown.
 *
 * Takes: every run's figures (CompareResults, as also written to JSON) and the plots' file names.
 * Gives: `headlineTable()`, the Markdown table printed at the end of a run; `markdownReport()`, the
 * whole report. Repeated figures are shown as "median (min–max)"; a ratio is Ichidan's figure over
 * Postfix's from the same repetition (the two ran minutes apart at most), median over repetitions.
 */
import type { BatchResult } from './bench-compare-batch.js';
import type { FairnessResult } from './bench-compare-fairness.js';
import type { IsolationResult, IsolationSettings } from './bench-compare-isolation.js';
import type { Hotspot, ProfileSummary } from './bench-profile.js';
import { TENANTS, type RelayKind } from './bench-relays.js';
import { mean, percentile, spread, type Spread } from './bench-stats.js';

type Rep<T> = T & { rep: number };

export interface CompareResults {
  when: string;
  machine: { cpus: number; cpuModel: string; memoryGB: number; kernel: string; node: string; postfix: string; ichidan: string; os: string };
  command: string;
  settings: {
    reps: number; isolation: IsolationSettings; tenantN: number; sessions: number;
    fairness: { perTenant: number; timeoutMs: number; stallMs: number };
    workloads: Array<{ name: string; size: number; count: number; reuse: boolean }>;
  };
  minutes?: number;
  isolation: Array<Rep<IsolationResult>>;
  resources: Array<Rep<BatchResult>>;
  fairness: Array<Rep<FairnessResult>>;
  throughput: Array<Rep<BatchResult & { workload: string }>>;
  profile?: { workload: string; result: BatchResult; summaries: ProfileSummary[] };
  /** Experiment 2 once more, Ichidan with `delivery.transcripts.enabled: false`. */
  withoutTranscripts?: BatchResult;
}

const RELAYS: RelayKind[] = ['postfix', 'ichidan'];
const NAME: Record<RelayKind, string> = { postfix: 'Postfix', ichidan: 'Ichidan' };

function num(v: number, digits: number): string {
  if (!Number.isFinite(v)) return '—';
  return v.toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits });
}

/** "median (min–max)", or the one value. */
function show(s: Spread, digits = 0, unit = ''): string {
  if (!Number.isFinite(s.median)) return '—';
  const range = s.values.length > 1 && s.min !== s.max ? ` (${num(s.min, digits)}–${num(s.max, digits)})` : '';
  return `${num(s.median, digits)}${unit}${range}`;
}

const reps = <T extends { rep: number }>(list: T[]) => [...new Set(list.map((r) => r.rep))].sort((a, b) => a - b);

/** The figure per repetition for one relay, and Ichidan's over Postfix's per repetition. */
function compare<T extends { rep: number; relay: RelayKind }>(list: T[], figure: (r: T) => number): Record<RelayKind, Spread> & { ratio: Spread } {
  const of = (kind: RelayKind, rep: number) => list.find((r) => r.relay === kind && r.rep === rep);
  const ratios = reps(list).map((rep) => {
    const p = of('postfix', rep), i = of('ichidan', rep);
    return p && i ? figure(i) / figure(p) : NaN;
  });
  return {
    postfix: spread(list.filter((r) => r.relay === 'postfix').map(figure)),
    ichidan: spread(list.filter((r) => r.relay === 'ichidan').map(figure)),
    ratio: spread(ratios),
  };
}

interface IsolationRatio {
  perRep: Spread;
  pooled: number;
  pooledMean: number;
  grows: boolean;
  /** Some of the tarpit runs' messages were never delivered: the ratios are lower bounds. */
  censored: boolean;
}

/** A tenant's p99 with MX3 a tarpit over its p99 without, per repetition and over all latencies pooled. */
function isolationRatio(runs: CompareResults['isolation'], kind: RelayKind, t: 'a' | 'b'): IsolationRatio {
  const mine = runs.filter((r) => r.relay === kind);
  const perRep = reps(mine).map((rep) => {
    const h = mine.find((r) => r.rep === rep && !r.tarpit), p = mine.find((r) => r.rep === rep && r.tarpit);
    return h && p ? p.perTenant[t].p99 / h.perTenant[t].p99 : NaN;
  });
  const pool = (tarpit: boolean) => mine.filter((r) => r.tarpit === tarpit).flatMap((r) => r.samples[t]).sort((x, y) => x - y);
  const ratio = percentile(pool(true), 0.99) / percentile(pool(false), 0.99);
  return {
    perRep: spread(perRep), pooled: ratio, pooledMean: mean(pool(true)) / mean(pool(false)), grows: ratio > 1.2,
    censored: mine.some((r) => r.tarpit && r.perTenant[t].censored),
  };
}

const yes = (ok: boolean) => (ok ? '**met**' : '**not met**');
const times = (v: number) => `${num(v, v >= 10 ? 0 : 2)}×`;
const showRatio = (s: Spread) => (s.values.length > 1 && s.min !== s.max ? `${times(s.median)} (${times(s.min)}–${times(s.max)})` : times(s.median));

export function headlineTable(r: CompareResults): string {
  const rows: string[][] = [];
  for (const w of r.settings.workloads) {
    const c = compare(r.throughput.filter((x) => x.workload === w.name), (x) => x.rate);
    if (!Number.isFinite(c.ratio.median)) continue;
    rows.push([`Throughput, ${w.name} (msg/s)`, show(c.postfix), show(c.ichidan), show(c.ratio, 2, '×'), '≥ 1.5×', yes(c.ratio.median >= 1.5)]);
  }
  if (r.resources.length) {
    const cpu = compare(r.resources, (x) => x.cpuMsPerMessage);
    const disk = compare(r.resources, (x) => x.diskBytesPerMessage / 1024);
    const rss = compare(r.resources, (x) => x.peakRss / 2 ** 20);
    const pss = compare(r.resources, (x) => x.peakPss / 2 ** 20);
    rows.push(['Exp. 2: CPU per message (ms)', show(cpu.postfix, 2), show(cpu.ichidan, 2), show(cpu.ratio, 2, '×'), '≤ 1×', yes(cpu.ratio.median <= 1)]);
    rows.push(['Exp. 2: disk written per message (KB)', show(disk.postfix, 1), show(disk.ichidan, 1), show(disk.ratio, 2, '×'), '≤ 1×', yes(disk.ratio.median <= 1)]);
    const own = compare(r.resources, (x) => x.processWriteBytesPerMessage / 1024);
    rows.push(["Exp. 2: the relay's own writes per message (KB, /proc/PID/io: no journal, no neighbours)", show(own.postfix, 1), show(own.ichidan, 1), show(own.ratio, 2, '×'), '—', '—']);
    rows.push(['Exp. 2: peak memory, RSS / PSS (MB)', `${show(rss.postfix)} / ${show(pss.postfix)}`, `${show(rss.ichidan)} / ${show(pss.ichidan)}`,
      `${show(rss.ratio, 2, '×')} / ${show(pss.ratio, 2, '×')}`, '—', '—']);
  }
  if (r.isolation.length) {
    for (const t of ['a', 'b'] as const) {
      const p = isolationRatio(r.isolation, 'postfix', t), i = isolationRatio(r.isolation, 'ichidan', t);
      const cell = (x: IsolationRatio) => {
        const atLeast = x.censored ? '≥ ' : '';
        const range = x.perRep.min !== x.perRep.max ? `, by repetition ${times(x.perRep.min)}–${times(x.perRep.max)}` : '';
        return `p99 ${atLeast}${times(x.pooled)}${range}; mean ${atLeast}${times(x.pooledMean)}`;
      };
      rows.push([`Exp. 1: ${t.toUpperCase()}'s latency with MX3 a tarpit ÷ without (all repetitions pooled)`, cell(p), cell(i), '—',
        'Ichidan ≤ 1.2×, Postfix grows', yes(i.pooled <= 1.2 && p.grows)]);
    }
  }
  if (r.fairness.length) {
    const variants = [...new Set(r.fairness.map((f) => f.variant))];
    const per = (figure: (f: FairnessResult) => number, digits: number, relay: RelayKind) => variants
      .filter((v) => r.fairness.some((f) => f.variant === v && f.relay === relay))
      .map((v) => `${relay === 'postfix' ? `${v.replace(/^Postfix \((.*)\)$/, '$1')}: ` : ''}${show(spread(r.fairness.filter((f) => f.variant === v).map(figure)), digits)}`).join('; ');
    const ich = r.fairness.filter((f) => f.relay === 'ichidan');
    rows.push(['Exp. 3: refusals at the capped MX', per((f) => f.refused, 0, 'postfix'), per((f) => f.refused, 0, 'ichidan'), '—', '0',
      yes(ich.length > 0 && ich.every((f) => f.refused === 0))]);
    rows.push(['Exp. 3: peak connections from the relay at the MX (cap 10; sampled)', per((f) => f.peakConnections, 0, 'postfix'), per((f) => f.peakConnections, 0, 'ichidan'), '—', '≤ 10',
      yes(ich.length > 0 && ich.every((f) => f.peakConnections <= 10))]);
    rows.push(["Exp. 3: Jain's index over the tenants' throughputs", per((f) => f.jain, 3, 'postfix'), per((f) => f.jain, 3, 'ichidan'), '—', '≥ 0.99',
      yes(ich.length > 0 && spread(ich.map((f) => f.jain)).median >= 0.99)]);
    rows.push(['Exp. 3: all tenants done (s; — = not all delivered in the run)', per((f) => f.seconds, 1, 'postfix'), per((f) => f.seconds, 1, 'ichidan'), '—', '—', '—']);
  }
  const head = ['measure', 'Postfix', 'Ichidan', 'Ichidan ÷ Postfix', 'target', 'met'];
  return [head, head.map(() => '---'), ...rows].map((row) => `| ${row.join(' | ')} |`).join('\n');
}

const table = (head: string[], rows: string[][]) => [head, head.map(() => '---'), ...rows].map((row) => `| ${row.join(' | ')} |`).join('\n');

function isolationSection(r: CompareResults, plots: string[]): string[] {
  const s = r.settings.isolation;
  const rows: string[][] = [];
  for (const kind of RELAYS) {
    for (const tarpit of [false, true]) {
      const runs = r.isolation.filter((x) => x.relay === kind && x.tarpit === tarpit);
      if (!runs.length) continue;
      const figure = (t: 'a' | 'b' | 'c', f: (x: IsolationResult['perTenant']['a']) => number, digits = 0) =>
        `${runs.some((x) => x.perTenant[t].censored) ? '≥ ' : ''}${show(spread(runs.map((x) => f(x.perTenant[t]))), digits)}`;
      rows.push([NAME[kind], tarpit ? 'tarpit' : 'healthy',
        ...(['a', 'b'] as const).flatMap((t) => [figure(t, (x) => x.mean), figure(t, (x) => x.p99), `${show(spread(runs.map((x) => x.perTenant[t].delivered)))} / ${show(spread(runs.map((x) => x.perTenant[t].submitted)))}`]),
        `${show(spread(runs.map((x) => x.perTenant.c.delivered)))} / ${show(spread(runs.map((x) => x.perTenant.c.submitted)))}`]);
    }
  }
  const ratioRows = RELAYS.flatMap((kind) => (['a', 'b'] as const).map((t) => {
    const x = isolationRatio(r.isolation, kind, t);
    const means = spread(reps(r.isolation).map((rep) => {
      const h = r.isolation.find((y) => y.relay === kind && y.rep === rep && !y.tarpit), p = r.isolation.find((y) => y.relay === kind && y.rep === rep && y.tarpit);
      return h && p ? p.perTenant[t].mean / h.perTenant[t].mean : NaN;
    }));
    const atLeast = x.censored ? '≥ ' : '';
    return [NAME[kind], t.toUpperCase(), atLeast + times(x.pooled), showRatio(x.perRep), atLeast + times(x.pooledMean), showRatio(means)];
  }));
  return [
    '## Experiment 1: congestion isolation', '',
    `Every ${s.periodMs / 1000} s for ${s.durationMs / 1000} s, tenants A and B (MUAs on 127.0.0.21 and .22) send 10 messages each to MX1 and MX2, tenant C (127.0.0.23) ${s.cBurst} to MX3; `
    + `then A's and B's mail is waited for up to ${s.drainMs / 1000} s. MX3 healthy, or a tarpit answering every command after ${s.tarpitMs / 1000} s. `
    + 'Postfix: `qmgr_message_active_limit = 200`, otherwise defaults. Ichidan: defaults, tenants by client network. '
    + "Latency: the MX's 250 minus the MUA's 250. \"≥\": some messages were still undelivered at the end and count with the time they had waited. "
    + '"Sent": messages the relay accepted; a relay that slows its acceptance (Postfix\'s `in_flow_delay` once its queue manager falls behind) gets fewer of C\'s.', '',
    table(['relay', 'MX3', 'A mean (ms)', 'A p99 (ms)', 'A delivered / sent', 'B mean (ms)', 'B p99 (ms)', 'B delivered / sent', 'C delivered / sent'], rows), '',
    table(['relay', 'tenant', 'p99 tarpit ÷ healthy, pooled', 'by repetition', 'mean tarpit ÷ healthy, pooled', 'by repetition'], ratioRows), '',
    'Pooled: the latencies of all repetitions together (a p99 over one repetition\'s few hundred messages is little more than its largest few).', '',
    ...plots.map((p) => `![${p}](${p})`), '',
    'The plots show the last repetition; Postfix solid, Ichidan dashed. Lines that coincide (A\'s and B\'s, sent alike) hide one another.', '',
  ];
}

/** A row per relay that ran; `label` names the one row of a list from one relay. */
function batchRows(list: Array<Rep<BatchResult>>, label?: string): string[][] {
  return RELAYS.filter((kind) => list.some((x) => x.relay === kind)).map((kind) => {
    const mine = list.filter((x) => x.relay === kind);
    const f = (g: (x: BatchResult) => number, digits = 0) => show(spread(mine.map(g)), digits);
    return [label ?? NAME[kind], f((x) => x.seconds, 1), f((x) => x.rate), f((x) => x.p50), f((x) => x.p99), f((x) => x.cpuSeconds, 1), f((x) => x.cpuMsPerMessage, 2),
      `${[...new Set(mine.map((x) => x.busiestThread.name))].join(', ')}: ${f((x) => x.busiestThread.coreShare * 100)} %`,
      f((x) => x.diskBytesPerMessage / 1024, 1), f((x) => x.processWriteBytesPerMessage / 1024, 1), f((x) => x.peakRss / 2 ** 20), f((x) => x.peakPss / 2 ** 20)];
  });
}

const BATCH_HEAD = ['relay', 'seconds', 'msg/s', 'p50 (ms)', 'p99 (ms)', 'CPU (s)', 'CPU per msg (ms)', 'busiest thread, share of a core', 'disk per msg (KB)', "relay's own writes per msg (KB)", 'peak RSS (MB)', 'peak PSS (MB)'];

function fairnessSection(r: CompareResults): string[] {
  const variants = [...new Set(r.fairness.map((f) => f.variant))];
  const rows = variants.map((v) => {
    const runs = r.fairness.filter((f) => f.variant === v);
    const f = (g: (x: FairnessResult) => number, digits = 0) => show(spread(runs.map(g)), digits);
    return [v, ...TENANTS.map((t) => `${f((x) => x.perTenant[t].delivered)} in ${f((x) => x.perTenant[t].seconds, 1)} s`),
      f((x) => x.jain, 3), f((x) => x.refused), f((x) => x.peakConnections), f((x) => x.connections), f((x) => x.messagesPerConnection, 1), f((x) => x.relayDeferred)];
  });
  const n = r.settings.fairness.perTenant;
  return [
    '## Experiment 3: connection cap and fairness', '',
    `The MX of capped.example is a second private Postfix (smtpd on 127.0.0.34, \`smtpd_client_connection_count_limit = 10\`, no exceptions, mail discarded). `
    + `Tenants A, B and C send ${n} messages each at once (five connections each). A run ends when everything has arrived, after ${r.settings.fairness.timeoutMs / 1000} s, `
    + `or ${r.settings.fairness.stallMs / 1000} s without a new arrival (Postfix retries a deferred message after \`minimal_backoff_time\`, 300 s). `
    + "Completion: a tenant's first submission to the MX's log showing its last message. Peak connections: from one client at the MX, sampled every 20 ms.", '',
    table(['relay', 'A delivered in', 'B delivered in', 'C delivered in', "Jain's index", 'refused by the MX', 'peak connections', 'connections served', 'messages per connection', 'relay deferrals'], rows), '',
  ];
}

const hotspotRow = (h: Hotspot) => [`\`${h.name}\``, h.where, num(h.ms, 0), `${num(h.share * 100, 1)} %`];

function profileSection(p: NonNullable<CompareResults['profile']>): string[] {
  const out = ['## Where Ichidan spends its CPU', '',
    `One more Ichidan run of "${p.workload}" under \`node --cpu-prof\` (the profiler slows it a little): ${num(p.result.rate, 0)} msg/s, ${num(p.result.cpuMsPerMessage, 2)} ms CPU per message.`, ''];
  for (const s of p.summaries) {
    out.push(`Thread profile \`${s.file}\`: busy ${num(s.busyMs, 0)} ms of the ${num(s.spanMs, 0)} ms it ran (${num((100 * s.busyMs) / s.spanMs, 0)} %, start-up and shut-down included).`, '',
      table(['where the time goes', 'ms', 'share'], s.byOrigin.slice(0, 12).map((o) => [o.origin, num(o.ms, 0), `${num(o.share * 100, 1)} %`])), '',
      table(['function (self time)', 'file', 'ms', 'share'], s.top.map(hotspotRow)), '',
      table(['nearest Ichidan or package function (self time of all beneath it)', 'file', 'ms', 'share'], s.topCallers.map(hotspotRow)), '');
  }
  return out;
}

export function markdownReport(r: CompareResults, plots: string[]): string {
  const m = r.machine;
  const out = [
    `# Ichidan and Postfix side by side, ${r.when.slice(0, 10)}`, '',
    `Machine: ${m.cpus} × ${m.cpuModel}, ${m.memoryGB} GB, ${m.os}, Linux ${m.kernel}; Node ${m.node}; Postfix ${m.postfix}; Ichidan ${m.ichidan}. `
    + `Other work may have shared the machine: read the ratios, which pair runs minutes apart. ${r.settings.reps} repetition${r.settings.reps === 1 ? '' : 's'}`
    + `${r.minutes ? `, ${num(r.minutes, 1)} minutes in all` : ''}; figures are "median (min–max)".`, '',
    `Command: \`${r.command}\``, '',
    'Both relays fsync every message before its 250; everything runs on 127.0.0.x.', '',
    '## Headline', '', headlineTable(r), '',
  ];
  if (r.isolation.length) out.push(...isolationSection(r, plots));
  if (r.resources.length) {
    out.push('## Experiment 2: resource use', '',
      `Three tenants' MUAs (five reused connections each) send ${r.settings.tenantN} messages each (2 KB) at once through the relay to smtp-sink. `
      + "CPU: user + system time of the relay's processes (Postfix's master and all its children, exited ones included; the Ichidan process). "
      + 'Disk: bytes the device wrote, read around a `sync` (journal included, and anything else writing to that disk then); the relay\'s own writes come from /proc/PID/io. '
      + 'Memory: summed over the processes, sampled every 250 ms; RSS counts shared pages once per process, PSS divides them.'
      + (r.withoutTranscripts ? ' The last row is one more Ichidan run with `delivery.transcripts.enabled: false`: by default it records every outbound session\'s commands and replies in SQLite.' : ''), '',
      table(BATCH_HEAD, [...batchRows(r.resources), ...(r.withoutTranscripts ? batchRows([{ ...r.withoutTranscripts, rep: 1 }], 'Ichidan, transcripts off (one run)') : [])]), '');
  }
  if (r.fairness.length) out.push(...fairnessSection(r));
  if (r.throughput.length) {
    out.push('## Durable relay throughput', '',
      `smtp-source (${r.settings.sessions} sessions) → relay → smtp-sink, as \`npm run bench\` runs it, fewer messages. Latency: the relay's own (Postfix's \`delay=\`, Ichidan's delivery records).`, '');
    for (const w of r.settings.workloads) {
      const list = r.throughput.filter((x) => x.workload === w.name);
      if (list.length) out.push(`### ${w.name}, ${w.count} messages`, '', table(BATCH_HEAD, batchRows(list)), '');
    }
  }
  if (r.profile) out.push(...profileSection(r.profile));
  return out.join('\n');
}
