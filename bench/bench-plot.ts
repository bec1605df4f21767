/*
 * A small SVG line-plot writer for benchmark time series, so results can be looked at without a
 * plotting library.
 *
 * Takes: a title, axis labels and named series of (x, y) points; a y value of null (no data for
 * that x: a time bucket in which nothing arrived) or, on a log axis, one at or below zero is left
 * out, and the line joins the points either side of it.
 * Gives: the text of a standalone SVG document (axes with ticks, one coloured line per series,
 * every other one dashed, a legend beside the plot), linear or base-10 logarithmic on y.
 */

export interface PlotSeries {
  name: string;
  points: Array<[number, number | null]>;
}

export interface PlotSpec {
  title: string;
  xLabel: string;
  yLabel: string;
  series: PlotSeries[];
  logY?: boolean;
  width?: number;
  height?: number;
}

const COLOURS = ['#1f77b4', '#d62728', '#2ca02c', '#ff7f0e', '#9467bd', '#8c564b'];
const MARGIN = { left: 64, right: 130, top: 32, bottom: 44 };

function escapeXml(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');
}

/** Tick values at 1, 2 or 5 times a power of ten, about `count` of them across [lo, hi]. */
function linearTicks(lo: number, hi: number, count = 6): number[] {
  const raw = (hi - lo) / count;
  const magnitude = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * magnitude).find((s) => s >= raw) ?? 10 * magnitude;
  const ticks: number[] = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) ticks.push(Number(v.toPrecision(12)));
  return ticks;
}

function label(v: number): string {
  if (Math.abs(v) >= 10_000) return `${v / 1000}k`;
  return String(Number(v.toPrecision(6)));
}

export function linePlot(spec: PlotSpec): string {
  const width = spec.width ?? 760;
  const height = spec.height ?? 360;
  const plotW = width - MARGIN.left - MARGIN.right;
  const plotH = height - MARGIN.top - MARGIN.bottom;
  const usable = (y: number | null): y is number => y !== null && Number.isFinite(y) && (!spec.logY || y > 0);
  const xs = spec.series.flatMap((s) => s.points.map(([x]) => x));
  const ys = spec.series.flatMap((s) => s.points.map(([, y]) => y).filter(usable));
  const xMin = xs.length ? Math.min(...xs) : 0;
  const xMax = xs.length ? Math.max(...xs, xMin + 1) : 1;

  let yOf: (y: number) => number;
  let yTicks: number[];
  if (spec.logY) {
    // Padded a little so that a value on a power of ten does not sit on the axis.
    const lo = Math.floor(Math.log10(ys.length ? Math.min(...ys) : 1) - 0.05);
    const hi = Math.max(Math.ceil(Math.log10(ys.length ? Math.max(...ys) : 10) + 0.05), lo + 1);
    yOf = (y) => MARGIN.top + plotH - ((Math.log10(y) - lo) / (hi - lo)) * plotH;
    // Over a few decades the 2s and 5s are worth a label; over many they would crowd.
    const steps = hi - lo <= 3 ? [1, 2, 5] : [1];
    yTicks = Array.from({ length: hi - lo }, (_, i) => steps.map((m) => m * 10 ** (lo + i))).flat().concat(10 ** hi);
  } else {
    const hi = ys.length ? Math.max(...ys, 1) : 1;
    yTicks = linearTicks(0, hi);
    const top = Math.max(hi, yTicks[yTicks.length - 1]);
    yOf = (y) => MARGIN.top + plotH - (y / top) * plotH;
  }
  const xOf = (x: number): number => MARGIN.left + ((x - xMin) / (xMax - xMin)) * plotW;

  const out: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="sans-serif" font-size="11">`,
    `<rect width="${width}" height="${height}" fill="white"/>`,
    `<text x="${width / 2}" y="18" text-anchor="middle" font-size="13">${escapeXml(spec.title)}</text>`,
  ];
  for (const t of yTicks) {
    const y = yOf(t).toFixed(1);
    out.push(`<line x1="${MARGIN.left}" x2="${MARGIN.left + plotW}" y1="${y}" y2="${y}" stroke="#e5e5e5"/>`,
      `<text x="${MARGIN.left - 6}" y="${y}" text-anchor="end" dominant-baseline="middle">${label(t)}</text>`);
  }
  for (const t of linearTicks(xMin, xMax)) {
    const x = xOf(t).toFixed(1);
    out.push(`<line x1="${x}" x2="${x}" y1="${MARGIN.top + plotH}" y2="${MARGIN.top + plotH + 4}" stroke="black"/>`,
      `<text x="${x}" y="${MARGIN.top + plotH + 16}" text-anchor="middle">${label(t)}</text>`);
  }
  out.push(
    `<polyline points="${MARGIN.left},${MARGIN.top} ${MARGIN.left},${MARGIN.top + plotH} ${MARGIN.left + plotW},${MARGIN.top + plotH}" fill="none" stroke="black"/>`,
    `<text x="${MARGIN.left + plotW / 2}" y="${height - 8}" text-anchor="middle">${escapeXml(spec.xLabel)}</text>`,
    `<text transform="translate(14 ${MARGIN.top + plotH / 2}) rotate(-90)" text-anchor="middle">${escapeXml(spec.yLabel)}</text>`,
  );
  spec.series.forEach((s, i) => {
    const colour = COLOURS[i % COLOURS.length];
    // Every other series dashed, so one drawn over an identical one still shows.
    const dash = i % 2 ? ' stroke-dasharray="6 3"' : '';
    const points = s.points.filter((p): p is [number, number] => usable(p[1])).map(([x, y]) => `${xOf(x).toFixed(1)},${yOf(y).toFixed(1)}`);
    if (points.length === 1) {
      const [x, y] = points[0].split(',');
      out.push(`<circle cx="${x}" cy="${y}" r="2" fill="${colour}"/>`);
    } else if (points.length > 1) {
      out.push(`<polyline points="${points.join(' ')}" fill="none" stroke="${colour}" stroke-width="1.5"${dash}/>`);
    }
    const lx = MARGIN.left + plotW + 12, ly = MARGIN.top + 8 + i * 16;
    out.push(`<line x1="${lx}" x2="${lx + 18}" y1="${ly}" y2="${ly}" stroke="${colour}" stroke-width="2"${dash}/>`,
      `<text x="${lx + 22}" y="${ly}" dominant-baseline="middle">${escapeXml(s.name)}</text>`);
  });
  out.push('</svg>', '');
  return out.join('\n');
}
