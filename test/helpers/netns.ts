/*
 * Network namespaces for tests that need real netfilter: a small lab of namespaces joined by veth
 * pairs, with addresses, routes and iptables NAT rules, and processes running inside them.
 *
 * Takes: root, `ip` (iproute2) and `iptables`/`ip6tables`.
 * Gives: `canUseNetns()` and `canUseIp6Nat()`, checked synchronously (suites decide `skipIf` at
 * collection time) by creating and deleting a probe namespace; a reason when the machine cannot,
 * and with CI set `canUseNetns()` throws instead, so a CI run never passes by skipping. `new
 * NetnsLab()` creates namespaces named `ichidan-<pid>-<n>-<label>` (unique to this process, so
 * parallel test workers never meet) and `cleanup()` ends the processes it started, by pid, then
 * deletes its namespaces. Everything else it made (veths, addresses, routes, rules) lives inside
 * those namespaces and goes with them.
 * Network: none outside its own namespaces; it never changes the root namespace.
 */
import { execFile, spawn, spawnSync, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { loadOriginalDst } from '../../mta/proxy/proxy-origdst.js';

export type NetnsSupport = { ok: true } | { ok: false; reason: string };

export interface VethEnd {
  ns: string;
  /** The device name inside `ns` (at most 15 characters). */
  name: string;
  /** Addresses in CIDR form; IPv6 ones are added without duplicate address detection, usable at once. */
  addresses?: string[];
}

export interface NatRule {
  family: 4 | 6;
  /** The address and port the client dials. */
  destination: string;
  port: number;
  /** Only packets arriving on this device. */
  inInterface?: string;
}

export interface RunResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

let probeCount = 0;
// Shared by every lab of the process, so two labs never pick the same name.
let namespaceCount = 0;

/** Runs a command in a fresh probe namespace; the reason it failed, or null when it succeeded. */
function probeInNamespace(what: string, command: string[][]): string | null {
  const name = `ichidan-probe-${process.pid}-${probeCount++}`;
  const add = spawnSync('ip', ['netns', 'add', name], { encoding: 'utf8' });
  if (add.status !== 0) return `cannot create a network namespace (ip netns add: ${add.stderr.trim() || `exit ${add.status}`})`;
  try {
    for (const args of command) {
      const run = spawnSync('ip', ['netns', 'exec', name, ...args], { encoding: 'utf8' });
      if (run.status !== 0) return `${what} (${args.join(' ')}: ${run.stderr.trim() || `exit ${run.status}`})`;
    }
    return null;
  } finally {
    spawnSync('ip', ['netns', 'del', name]);
  }
}

function probeNetns(): NetnsSupport {
  if (process.platform !== 'linux') return { ok: false, reason: `network namespaces are Linux-only (this is ${process.platform})` };
  if (process.getuid?.() !== 0) return { ok: false, reason: 'needs root for ip netns and iptables' };
  for (const [tool, pkg] of [['ip', 'iproute2'], ['iptables', 'iptables']]) {
    if (spawnSync(tool, ['-V'], { stdio: 'ignore' }).error) return { ok: false, reason: `no ${tool} command (install ${pkg})` };
  }
  const problem = probeInNamespace('iptables has no nat table in a namespace', [
    ['ip', 'link', 'set', 'lo', 'up'],
    ['iptables', '-t', 'nat', '-A', 'PREROUTING', '-p', 'tcp', '--dport', '25', '-j', 'REDIRECT', '--to-ports', '2525'],
  ]);
  return problem === null ? { ok: true } : { ok: false, reason: problem };
}

let netnsSupport: NetnsSupport | undefined;
let ip6NatSupport: NetnsSupport | undefined;

export function canUseNetns(): NetnsSupport {
  netnsSupport ??= probeNetns();
  if (!netnsSupport.ok && process.env.CI) {
    throw new Error(`the network namespace tests cannot run: ${netnsSupport.reason}`);
  }
  return netnsSupport;
}

/** Whether ip6tables can REDIRECT inside a namespace (needs `canUseNetns()` first); in CI it must. */
export function canUseIp6Nat(): NetnsSupport {
  if (ip6NatSupport) return ip6NatSupport;
  const support = probeIp6Nat();
  if (!support.ok && process.env.CI) throw new Error(`the IPv6 redirect test cannot run: ${support.reason}`);
  return (ip6NatSupport = support);
}

function probeIp6Nat(): NetnsSupport {
  if (spawnSync('ip6tables', ['-V'], { stdio: 'ignore' }).error) return { ok: false, reason: 'no ip6tables command' };
  const problem = probeInNamespace('ip6tables cannot REDIRECT in a namespace', [
    ['ip6tables', '-t', 'nat', '-A', 'PREROUTING', '-p', 'tcp', '--dport', '25', '-j', 'REDIRECT', '--to-ports', '2525'],
  ]);
  return problem === null ? { ok: true } : { ok: false, reason: problem };
}

export class NetnsLab {
  private readonly namespaces: string[] = [];
  private readonly children: ChildProcess[] = [];

  /** A new namespace with its loopback up; returns its name. */
  namespace(label: string): string {
    const name = `ichidan-${process.pid}-${namespaceCount++}-${label}`;
    mustRun('ip', ['netns', 'add', name]);
    this.namespaces.push(name);
    this.exec(name, 'ip', ['link', 'set', 'lo', 'up']);
    return name;
  }

  /** A veth pair from `a.ns` to `b.ns`, both ends up with their addresses; made inside `a.ns`. */
  veth(a: VethEnd, b: VethEnd): void {
    this.exec(a.ns, 'ip', ['link', 'add', a.name, 'type', 'veth', 'peer', 'name', b.name, 'netns', b.ns]);
    for (const end of [a, b]) {
      for (const address of end.addresses ?? []) this.address(end.ns, end.name, address);
      this.exec(end.ns, 'ip', ['link', 'set', end.name, 'up']);
    }
  }

  address(ns: string, device: string, cidr: string): void {
    const noDad = cidr.includes(':') ? ['nodad'] : [];
    this.exec(ns, 'ip', ['address', 'add', cidr, 'dev', device, ...noDad]);
  }

  /** `ip route add <destination> via <gateway>`; the family follows the addresses. */
  route(ns: string, destination: string, gateway: string): void {
    this.exec(ns, 'ip', ['route', 'add', destination, 'via', gateway]);
  }

  /** One iptables (family 4) or ip6tables (family 6) command inside `ns`. */
  iptables(ns: string, family: 4 | 6, args: string[]): void {
    this.exec(ns, family === 4 ? 'iptables' : 'ip6tables', args);
  }

  /** TCP to `rule.destination:rule.port` arriving in `ns` goes to a local port instead. */
  redirect(ns: string, rule: NatRule, toPort: number): void {
    this.iptables(ns, rule.family, [...this.natMatch(rule), '-j', 'REDIRECT', '--to-ports', String(toPort)]);
  }

  /** TCP to `rule.destination:rule.port` arriving in `ns` goes to `to` (`addr:port`, `[v6]:port`). */
  dnat(ns: string, rule: NatRule, to: string): void {
    this.iptables(ns, rule.family, [...this.natMatch(rule), '-j', 'DNAT', '--to-destination', to]);
  }

  private natMatch(rule: NatRule): string[] {
    const inInterface = rule.inInterface ? ['-i', rule.inInterface] : [];
    return ['-t', 'nat', '-A', 'PREROUTING', ...inInterface, '-p', 'tcp', '-d', rule.destination, '--dport', String(rule.port)];
  }

  /** Runs a command inside `ns` and returns its stdout; throws with its stderr when it fails. */
  exec(ns: string, command: string, args: string[]): string {
    return mustRun('ip', ['netns', 'exec', ns, command, ...args]);
  }

  /** Runs a command inside `ns` to its end without blocking the test's event loop. */
  run(ns: string, command: string, args: string[], timeoutMs = 10_000): Promise<RunResult> {
    return new Promise((resolve) => {
      execFile('ip', ['netns', 'exec', ns, command, ...args], { encoding: 'utf8', timeout: timeoutMs }, (error, stdout, stderr) => {
        const code = error ? (typeof error.code === 'number' ? error.code : null) : 0;
        resolve({ code, stdout, stderr });
      });
    });
  }

  /**
   * A long-running process inside `ns`, ended at cleanup. `ip netns exec` replaces itself with
   * the command, so the returned pid is the command's own.
   */
  spawn(ns: string, command: string, args: string[], options: SpawnOptions = {}): ChildProcess {
    const child = spawn('ip', ['netns', 'exec', ns, command, ...args], { stdio: ['ignore', 'pipe', 'pipe'], ...options });
    this.children.push(child);
    return child;
  }

  /** Ends the processes, then deletes the namespaces; safe to call after a failed setup. */
  async cleanup(): Promise<void> {
    await Promise.all(this.children.map((child) => stop(child)));
    this.children.length = 0;
    const failures: string[] = [];
    for (const ns of this.namespaces.splice(0)) {
      const del = spawnSync('ip', ['netns', 'del', ns], { encoding: 'utf8' });
      if (del.status !== 0) failures.push(`${ns}: ${del.stderr.trim()}`);
    }
    if (failures.length > 0) throw new Error(`could not delete network namespaces: ${failures.join('; ')}`);
  }
}

function mustRun(command: string, args: string[]): string {
  const run = spawnSync(command, args, { encoding: 'utf8' });
  const line = `${command} ${args.join(' ')}`;
  if (run.error) throw new Error(`${line}: ${run.error.message}`, { cause: run.error });
  if (run.status !== 0) throw new Error(`${line} failed (exit ${run.status}): ${run.stderr.trim()}`);
  return run.stdout;
}

/** Signals a process that may have exited meanwhile (ESRCH is then no error). */
function signal(pid: number, name: NodeJS.Signals): void {
  try {
    process.kill(pid, name);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'ESRCH') throw error;
  }
}

/** SIGTERM, then SIGKILL when the process has not gone within two seconds. */
async function stop(child: ChildProcess): Promise<void> {
  if (child.pid === undefined || child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const pid = child.pid;
  signal(pid, 'SIGTERM');
  const timer = setTimeout(() => signal(pid, 'SIGKILL'), 2_000);
  await exited;
  clearTimeout(timer);
}

/** Whether the SO_ORIGINAL_DST addon loads (in CI it must). */
export function canUseOriginalDst(): NetnsSupport {
  const reader = loadOriginalDst();
  if (typeof reader === 'function') return { ok: true };
  if (process.env.CI) throw new Error(`the SO_ORIGINAL_DST addon is unusable: ${reader.error}`);
  return { ok: false, reason: reader.error };
}
