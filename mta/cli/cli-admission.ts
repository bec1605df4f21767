/*
 * `ichidan admission`: how loaded this node is, as admission measures it.
 *
 *   ichidan admission status [--json]   the mode, the pressure level and since when, queue
 *                                       intake (open, or paused while free disk or memory is at
 *                                       its overload floor), and each signal: its value, its busy
 *                                       and overload thresholds (floors: less is worse) and its
 *                                       own level; "-" for a signal not measured; each
 *                                       listener's known queue (networks steered to it, those
 *                                       left out, connections it took, those refused at the
 *                                       socket under overload); the scan slots in use and
 *                                       waiting, and how many unknown senders' scans may run
 *                                       at once now
 * Goes to the running process (admin/admin-admission.ts).
 */
import type { Command } from 'commander';
import type { AdmissionStatus } from '../admission/admission-pressure.js';
import { admin, commandConfig, iso, safe } from './cli-common.js';

/** Times in ms, shares as percentages, multiples as they are. */
const UNITS: Record<string, 'ms' | '%' | 'x'> = {
  eventLoopDelay: 'ms', scanWait: 'ms', scanLatency: 'ms', fsync: 'ms', sessions: '%', diskFree: '%', memoryFree: '%', mxQueries: 'x', connections: 'x',
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
  for (const q of s.knownQueues ?? []) {
    const left = q.left > 0 ? ` (${q.left} more did not fit)` : '';
    const refusing = q.refusing ? ', refusing everyone else at the socket' : '';
    const surges = q.surges > 0 ? `, ${q.surges} floods met by its guard` : '';
    process.stdout.write(`known queue on ${safe(q.listener)}: ${q.networks} networks${left}, ${q.accepted} connections taken, ${q.refused} refused at the socket${surges}${refusing}\n`);
  }
  if (s.scans) {
    const { capacity, reserved, inUse, waiting, unknown } = s.scans;
    const quickest = unknown.quickestMs === null ? '' : ` (the engines' quickest scan of late: ${unknown.quickestMs} ms)`;
    process.stdout.write(`scans: ${inUse} of ${capacity} (${reserved} kept for known senders), ${waiting.known} known and ${waiting.unknown} unknown waiting; `
      + `unknown senders' ${unknown.inUse} of at most ${unknown.limit} at once${quickest}\n`);
  }
}

async function status(cmd: Command, opts: { json?: boolean }): Promise<void> {
  const status = await admin(await commandConfig(cmd), 'GET', '/v1/admission') as unknown as AdmissionStatus;
  if (opts.json) process.stdout.write(JSON.stringify(status, null, 2) + '\n');
  else printStatus(status);
}

export function addAdmissionCommands(program: Command): Command {
  const admission = program.command('admission').description('how loaded this node is, as admission measures it');
  admission.command('status', { isDefault: true })
    .description('the mode, the pressure level and since when, queue intake, and each signal with its thresholds (the running process)')
    .option('--json', 'print as JSON')
    .action((opts: { json?: boolean }, cmd: Command) => status(cmd, opts));
  return admission;
}
