/*
 * `ichidan admission`: how loaded this node is, as admission measures it.
 *
 *   ichidan admission status [--json]   the mode, the pressure level and since when, queue
 *                                       intake (open, or paused while free disk or memory is at
 *                                       its overload floor), and each signal: its value, its busy
 *                                       and overload thresholds (floors: less is worse) and its
 *                                       own level; "-" for a signal not measured
 * Goes to the running process (admin/admin-admission.ts).
 */
import type { AdmissionStatus } from '../admission/admission-pressure.js';
import { admin, iso, options, safe, usage } from './cli-common.js';

export const ADMISSION_USAGE = `  ichidan admission status [--json] [-c FILE]`;

const FLAGS = { json: { type: 'boolean' } } as never;

/** Times in ms, shares as percentages, multiples as they are. */
const UNITS: Record<string, 'ms' | '%' | 'x'> = {
  eventLoopDelay: 'ms', scanWait: 'ms', scanLatency: 'ms', fsync: 'ms', sessions: '%', diskFree: '%', memoryFree: '%', mxQueries: 'x',
};

function shown(value: number | null, unit: 'ms' | '%' | 'x'): string {
  if (value === null) return '-';
  if (unit === '%') return `${Math.round(value * 1000) / 10}%`;
  return `${Math.round(value * 10) / 10}${unit === 'ms' ? 'ms' : 'x'}`;
}

function printStatus(s: AdmissionStatus): void {
  const measuring = s.measuring ? '' : ' (not measured: admission.mode is off)';
  process.stdout.write(`mode ${safe(s.mode)}, level ${safe(s.level)} since ${iso(s.since)}, intake ${safe(s.intake)}${measuring}\n`);
  process.stdout.write('signal\tvalue\tbusy\toverload\tlevel\n');
  for (const [name, r] of Object.entries(s.signals)) {
    const unit = UNITS[name] ?? 'x';
    const floor = r.floor ? '≤' : '≥';
    process.stdout.write([safe(name), shown(r.value, unit), floor + shown(r.busy, unit), floor + shown(r.overload, unit), safe(r.level)].join('\t') + '\n');
  }
}

export async function admission(args: string[]): Promise<void> {
  const { config, values, positionals } = options(args, FLAGS);
  if ((positionals[0] ?? 'status') !== 'status' || positionals.length > 1) usage(ADMISSION_USAGE);
  const status = await admin(config, 'GET', '/v1/admission') as unknown as AdmissionStatus;
  if ((values as Record<string, unknown>).json === true) process.stdout.write(JSON.stringify(status, null, 2) + '\n');
  else printStatus(status);
}
