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
 *   ichidan node undrain [--json]      take mail again
 * All go to the running process (admin/admin-cluster.ts).
 */
import type { Command } from 'commander';
import type { NodeView } from '../../queue/cluster/cluster-nodes.js';
import type { ClusterStatus } from '../mta-cluster.js';
import type { DrainStatus } from '../mta-drain.js';
import { admin, commandConfig, iso, safe } from './cli-common.js';

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

async function status(cmd: Command, opts: { json?: boolean }): Promise<void> {
  const status = await admin(await commandConfig(cmd), 'GET', '/v1/cluster') as unknown as ClusterStatus;
  if (opts.json) process.stdout.write(JSON.stringify(status, null, 2) + '\n');
  else printStatus(status);
  if (status.problem) {
    process.stderr.write(status.problem + '\n');
    process.exit(1);
  }
}

async function drain(action: 'drain' | 'undrain', cmd: Command, opts: { status?: boolean; json?: boolean }): Promise<void> {
  const config = await commandConfig(cmd);
  const status = action === 'drain'
    ? await admin(config, opts.status ? 'GET' : 'POST', '/v1/node/drain') as unknown as DrainStatus
    : await admin(config, 'POST', '/v1/node/undrain') as unknown as DrainStatus;
  if (opts.json) process.stdout.write(JSON.stringify(status, null, 2) + '\n');
  else printDrain(status);
}

export function addClusterCommands(program: Command): Command {
  const cluster = program.command('cluster').description('the cluster, seen from this node');
  cluster.command('status', { isDefault: true })
    .description('every node the registry knows and Redis\'s health; exit 1 with the reason when not clustered or Redis is away (what is known locally is still shown)')
    .option('--json', 'print as JSON')
    .action((opts: { json?: boolean }, cmd: Command) => status(cmd, opts));
  return cluster;
}

export function addNodeCommands(program: Command): Command {
  const node = program.command('node').description('this node in its cluster: draining it and taking it back');
  node.command('drain').description('stop taking mail and hand the queue to the peers; with --status, the drain\'s progress')
    .option('--status', 'only show the progress').option('--json', 'print as JSON')
    .action((opts: { status?: boolean; json?: boolean }, cmd: Command) => drain('drain', cmd, opts));
  node.command('undrain').description('take mail again')
    .option('--json', 'print as JSON')
    .action((opts: { json?: boolean }, cmd: Command) => drain('undrain', cmd, opts));
  return node;
}
