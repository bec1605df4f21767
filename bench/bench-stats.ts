/*
 * Small statistics for the comparison benchmark: percentiles, the median and range of repeated
 * runs, and Jain's fairness index.
 */

/** The value at quantile q of an ascending list (nearest rank); NaN for an empty list. */
export function percentile(sorted: number[], q: number): number {
  return sorted.length ? sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * q))] : NaN;
}

export function mean(values: number[]): number {
  return values.length ? values.reduce((s, v) => s + v, 0) / values.length : NaN;
}

/** Repetitions of one figure: their median and their range. */
export interface Spread { median: number; min: number; max: number; values: number[] }

export function spread(values: number[]): Spread {
  const finite = values.filter(Number.isFinite).sort((a, b) => a - b);
  if (!finite.length) return { median: NaN, min: NaN, max: NaN, values };
  const mid = finite.length / 2;
  const median = finite.length % 2 ? finite[Math.floor(mid)] : (finite[mid - 1] + finite[mid]) / 2;
  return { median, min: finite[0], max: finite[finite.length - 1], values };
}

/** (Σx)² / (n·Σx²): 1 when all are equal, 1/n when one takes everything. */
export function jain(xs: number[]): number {
  const sumSquares = xs.reduce((s, x) => s + x * x, 0);
  return sumSquares ? xs.reduce((s, x) => s + x, 0) ** 2 / (xs.length * sumSquares) : NaN;
}
