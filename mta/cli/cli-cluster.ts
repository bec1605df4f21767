/*
 * `ichidan cluster` and `ichidan node`: operating a cluster from any of its nodes.
 *
 *   ichidan cluster status [--json]    every node the registry knows (alive or gone, in flight,
 *                                      waiting, loop delay, memory, connection leases held,
 *                                      queued and held recipients, draining, pressure level)
 *                                      and Redis's health;
 *                                      exit 1 with a one-line reason when the node is not
 *                                      clustered or Redis is away (what is known locally is
 *                                      still shown)
 *   ichidan node drain [--json]        stop taking mail and hand the queue to the peers
 *   ichidan node drain --status [--json]   the drain's progress
 *   ichidan node undrain               take mail again
 * All go to the running process (admin/admin-cluster.ts).
 */
import type { NodeView } from '../../queue/cluster/cluster-nodes.js';
import type { ClusterStatus } from '../mta-cluster.js';
import type { DrainStatus } from '../mta-drain.js';
import { admin, iso, options, safe, usage } from './cli-common.js';

export const CLUSTER_USAGE = `  ichidan cluster status [--json] [-c FILE]
  ichidan node drain [--status] [--json] [-c FILE]
  ichidan node undrain [-c FILE]`;

const FLAGS = { json: { type: 'boolean' }, status: { type: 'boolean' } } as never;

type Row = Pick<NodeView, 'node' | 'active' | 'waiting' | 'rssMb' | 'leases' | 'queue' | 'draining' | 'smtp' | 'level'> & { alive: boolean | null; loopDelayMs: number | null };

function nodeLine(n: Row): string {
  const alive = n.alive === null ? 'local' : n.alive ? 'alive' : 'gone';
  const smtp = n.smtp ? `${n.smtp.address}:${n.smtp.port}` : '-';
  const delay = n.loopDelayMs === null ? '-' : String(n.loopDelayMs);
  return [safe(n.node), alive, n.active, n.waiting, delay, n.rssMb, n.leases ?? 0, n.queue.queued ?? 0, n.queue.held ?? 0, n.draining ? 'yes' : 'no', safe(n.level ?? '-'), smtp].join('\t');
}

function printStatus(s: ClusterStatus): void {
  process.stdout.write('node\tstate\tactive\twaiting\tloop_ms\trss_mb\tleases\tqueued\theld\tdraining\tlevel\tsmtp\n');
  const rows: Row[] = s.nodes ?? [{ ...s.local, alive: null }];
  for (const n of rows) process.stdout.write(nodeLine(n) + '\n');
  if (s.redis) {
    const r = s.redis;
    const detail = r.connected
      ? `connected, rtt ${r.rttMs} ms, version ${safe(r.version ?? '?')}, used memory ${safe(r.usedMemoryHuman ?? String(r.usedMemoryBytes ?? '?'))}`
      : 'not reachable';
    process.stdout.write(`redis ${safe(r.url)}: ${detail}\n`);
  }
}

function printDrain(d: DrainStatus): void {
  const state = !d.draining ? 'not draining' : d.finishedAt !== null ? `drained at ${iso(d.finishedAt)} (still refusing mail: undrain to take it again)` : 'draining';
  process.stdout.write(`${state}\n`);
  if (d.startedAt !== null) process.stdout.write(`started ${iso(d.startedAt)}, ${d.passes} passes, ${d.transferred} recipients transferred, ${d.failed} failed transfers\n`);
  process.stdout.write(`left here: ${d.remaining.queued ?? 0} queued, ${d.remaining.held ?? 0} held\n`);
  if (d.peers.length > 0) process.stdout.write(`peers: ${d.peers.map(safe).join(', ')}\n`);
  if (d.problem) process.stdout.write(`problem: ${safe(d.problem)}\n`);
}

export async function cluster(args: string[]): Promise<void> {
  const { config, values, positionals } = options(args, FLAGS);
  const json = (values as Record<string, unknown>).json === true;
  if ((positionals[0] ?? 'status') !== 'status' || positionals.length > 1) usage(CLUSTER_USAGE);
  const status = await admin(config, 'GET', '/v1/cluster') as unknown as ClusterStatus;
  if (json) process.stdout.write(JSON.stringify(status, null, 2) + '\n');
  else printStatus(status);
  if (status.problem) {
    process.stderr.write(status.problem + '\n');
    process.exit(1);
  }
}

export async function node(args: string[]): Promise<void> {
  const { config, values, positionals } = options(args, FLAGS);
  const flags = values as Record<string, unknown>;
  const [action] = positionals;
  let status: DrainStatus;
  if (action === 'drain' && positionals.length === 1) {
    status = await admin(config, flags.status === true ? 'GET' : 'POST', '/v1/node/drain') as unknown as DrainStatus;
  } else if (action === 'undrain' && positionals.length === 1 && flags.status !== true) {
    status = await admin(config, 'POST', '/v1/node/undrain') as unknown as DrainStatus;
  } else {
    usage(CLUSTER_USAGE);
  }
  if (flags.json === true) process.stdout.write(JSON.stringify(status, null, 2) + '\n');
  else printDrain(status);
}
