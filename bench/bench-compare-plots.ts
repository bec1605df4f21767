/*
 * The plots of experiment 1 of the comparison benchmark, as the seed drew them: cumulative
 * messages received per MX over time, and mean delivery latency per tenant over time on a log
 * scale, Postfix and Ichidan in one figure (Postfix's lines solid, Ichidan's dashed).
 *
 * Takes: experiment 1's runs (every repetition) and a file name prefix.
 * Gives: four SVG files, healthy and tarpit × received and latency, drawn from the last
 * repetition (the figures of every repetition are in the report's tables); their paths.
 */
import { writeFile } from 'node:fs/promises';
import type { IsolationResult } from './bench-compare-isolation.js';
import { linePlot, type PlotSeries } from './bench-plot.js';
import { TENANTS, type RelayKind } from './bench-relays.js';

const RELAY_NAME: Record<RelayKind, string> = { postfix: 'Postfix', ichidan: 'Ichidan' };
const MX_OF = { a: 'MX1', b: 'MX2', c: 'MX3' } as const;

export async function writeIsolationPlots(runs: Array<IsolationResult & { rep: number }>, prefix: string): Promise<string[]> {
  const lastRep = Math.max(...runs.map((r) => r.rep));
  const files: string[] = [];
  for (const tarpit of [false, true]) {
    const pair = (['postfix', 'ichidan'] as const).map((kind) => runs.find((r) => r.rep === lastRep && r.tarpit === tarpit && r.relay === kind))
      .filter((r): r is IsolationResult & { rep: number } => r !== undefined);
    if (!pair.length) continue;
    const state = tarpit ? 'MX3 a tarpit' : 'all MXs healthy';
    // Tenant by tenant, Postfix then Ichidan: the plot dashes every other line, so Ichidan's are the dashed ones.
    const series = (pick: (r: IsolationResult, t: (typeof TENANTS)[number]) => PlotSeries): PlotSeries[] =>
      TENANTS.flatMap((t) => pair.map((r) => pick(r, t)));
    const received = linePlot({
      title: `Messages received per MX (${state})`, xLabel: 'seconds since the first submission', yLabel: 'messages (cumulative)',
      series: series((r, t) => ({ name: `${RELAY_NAME[r.relay]} ${MX_OF[t]}`, points: r.series.t.map((x, i) => [x, r.series.received[t][i]]) })),
    });
    const latency = linePlot({
      title: `Mean delivery latency per tenant (${state})`, xLabel: 'seconds since the first submission', yLabel: 'ms (log scale)', logY: true,
      series: series((r, t) => ({ name: `${RELAY_NAME[r.relay]} ${t.toUpperCase()}`, points: r.series.t.map((x, i) => [x, r.series.meanLatency[t][i]]) })),
    });
    const name = tarpit ? 'tarpit' : 'healthy';
    files.push(`${prefix}-${name}-received.svg`, `${prefix}-${name}-latency.svg`);
    await writeFile(files[files.length - 2], received);
    await writeFile(files[files.length - 1], latency);
  }
  return files;
}
