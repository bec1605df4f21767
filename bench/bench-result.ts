/*
 * The last line every benchmark prints: `RESULT {json}`, its figures by name, for whoever collects
 * runs side by side. The names are paths through the benchmark's own results: nested keys and the
 * workload (or row) names joined by "_" in lower case, e.g. `2kb_connections_reused_ichidan_rate`.
 * Only numbers are kept; per-run arrays (their medians are already figures) are left to the JSON file.
 */
const slug = (s: string): string => s.replace(/([a-z0-9])([A-Z])/g, '$1_$2').toLowerCase().replace(/[^a-z0-9]+/g, '_').replace(/^_|_$/g, '');

/** A row of an array names itself by these fields, joined: "ichidan_tarpit_rep2", "2kb_connections_reused". */
const NAME_FIELDS = ['relay', 'workload', 'variant', 'name', 'message', 'tenant', 'path'];

function rowName(row: Record<string, unknown>): string | null {
  const parts = NAME_FIELDS.filter((f) => typeof row[f] === 'string').map((f) => slug(row[f] as string));
  if (typeof row.tarpit === 'boolean') parts.push(row.tarpit ? 'tarpit' : 'healthy');
  if (typeof row.rep === 'number') parts.push(`rep${row.rep}`);
  return parts.length > 0 ? parts.join('_') : null;
}

function collect(value: unknown, path: string[], out: Record<string, number>): void {
  if (typeof value === 'number') {
    if (Number.isFinite(value)) out[path.join('_')] = Number(value.toPrecision(6));
    return;
  }
  if (Array.isArray(value)) {
    for (const item of value) {
      if (!item || typeof item !== 'object' || Array.isArray(item)) continue;
      const row = item as Record<string, unknown>;
      const name = rowName(row);
      if (name === null) continue;
      const { rep: _rep, ...figures } = row;
      collect(figures, [...path, name], out);
    }
    return;
  }
  if (value && typeof value === 'object') {
    for (const [k, v] of Object.entries(value)) collect(v, [...path, slug(k)], out);
  }
}

/**
 * Prints the line. `named` are the headline figures under the names the issues give them (first in
 * the line, absent ones left out); every other number of `figures` follows under its path.
 */
export function printResult(figures: unknown, named: Record<string, number | null | undefined> = {}): void {
  const out: Record<string, number> = {};
  for (const [k, v] of Object.entries(named)) if (typeof v === 'number' && Number.isFinite(v)) out[k] = Number(v.toPrecision(6));
  collect(figures, [], out);
  console.log(`RESULT ${JSON.stringify(out)}`);
}
