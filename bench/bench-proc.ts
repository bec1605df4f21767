/*
 * What a relay costs the machine, read from /proc: CPU time and memory of a process tree, bytes its
 * processes handed to storage, the sectors a block device wrote, and connections open on a listener.
 *
 * Takes: a root pid (Postfix's master, or the Ichidan process), a path on the disk of interest, a
 * listening address and port.
 * Gives: CPU seconds of the tree (user + system of the live processes, plus the children they have
 * reaped, so a Postfix smtpd that exited mid-run still counts through its master) and of each
 * thread (to find one that is saturated), a sampler of the
 * tree's summed RSS and PSS, write bytes from /proc/PID/io (reaped children included, the same way),
 * the device's sector counter read after a `sync`, and a sampler of established connections per
 * client address on a listener (/proc/net/tcp).
 * Linux only; reading another user's /proc/PID/io and smaps needs root.
 */
import { execFileSync } from 'node:child_process';
import { readdirSync, readFileSync, statSync } from 'node:fs';

const CLOCK_TICKS = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim());
const PAGE_SIZE = Number(execFileSync('getconf', ['PAGESIZE'], { encoding: 'utf8' }).trim());

function readOrEmpty(path: string): string {
  try {
    return readFileSync(path, 'utf8');
  } catch {
    return ''; // the process has exited since it was listed
  }
}

/** Fields of /proc/PID/stat after the command name, which may itself hold spaces and parentheses. */
function statFields(pid: number): string[] | undefined {
  const text = readOrEmpty(`/proc/${pid}/stat`);
  const close = text.lastIndexOf(')');
  return close < 0 ? undefined : text.slice(close + 2).split(' ');
}

/** The root and all its live descendants. */
export function processTree(root: number): number[] {
  const children = new Map<number, number[]>();
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    const ppid = Number(statFields(Number(entry))?.[1]);
    if (!ppid) continue;
    const list = children.get(ppid) ?? [];
    list.push(Number(entry));
    children.set(ppid, list);
  }
  const tree: number[] = [];
  const pending = [root];
  while (pending.length) {
    const pid = pending.pop()!;
    tree.push(pid);
    pending.push(...(children.get(pid) ?? []));
  }
  return tree;
}

/** utime + stime + cutime + cstime of each process, summed, in seconds. */
export function cpuSeconds(pids: number[]): number {
  let ticks = 0;
  for (const pid of pids) {
    const f = statFields(pid);
    // Fields 14-17 of stat(5), counted from the state field (3) here.
    if (f) ticks += Number(f[11]) + Number(f[12]) + Number(f[13]) + Number(f[14]);
  }
  return ticks / CLOCK_TICKS;
}

/** CPU seconds (user + system) of every thread of the processes, by "pid/tid", with the thread's name. */
export function threadCpu(pids: number[]): Map<string, { name: string; seconds: number }> {
  const out = new Map<string, { name: string; seconds: number }>();
  for (const pid of pids) {
    let tids: string[];
    try {
      tids = readdirSync(`/proc/${pid}/task`);
    } catch {
      continue; // exited since it was listed
    }
    for (const tid of tids) {
      const text = readOrEmpty(`/proc/${pid}/task/${tid}/stat`);
      const close = text.lastIndexOf(')');
      if (close < 0) continue;
      const f = text.slice(close + 2).split(' ');
      out.set(`${pid}/${tid}`, { name: text.slice(text.indexOf('(') + 1, close), seconds: (Number(f[11]) + Number(f[12])) / CLOCK_TICKS });
    }
  }
  return out;
}

/** Bytes the processes caused to be written to storage, less what was truncated before it was. */
export function ioWriteBytes(pids: number[]): number {
  let bytes = 0;
  for (const pid of pids) {
    const io = readOrEmpty(`/proc/${pid}/io`);
    const field = (name: string) => Number(new RegExp(`^${name}: (\\d+)`, 'm').exec(io)?.[1] ?? 0);
    bytes += field('write_bytes') - field('cancelled_write_bytes');
  }
  return bytes;
}

export interface Memory { rss: number; pss: number }

/** RSS counts a shared library once per process; PSS splits shared pages among their users. */
export function memoryOf(pids: number[]): Memory {
  let rss = 0, pss = 0;
  for (const pid of pids) {
    rss += Number(readOrEmpty(`/proc/${pid}/statm`).split(' ')[1] ?? 0) * PAGE_SIZE;
    pss += Number(/^Pss:\s+(\d+) kB/m.exec(readOrEmpty(`/proc/${pid}/smaps_rollup`))?.[1] ?? 0) * 1024;
  }
  return { rss, pss };
}

/** The peak of the tree's summed memory, sampled until stopped. */
export function sampleMemory(root: number, intervalMs = 250): { stop(): Memory } {
  const peak: Memory = { rss: 0, pss: 0 };
  const sample = () => {
    const m = memoryOf(processTree(root));
    peak.rss = Math.max(peak.rss, m.rss);
    peak.pss = Math.max(peak.pss, m.pss);
  };
  sample();
  const timer = setInterval(sample, intervalMs);
  return { stop: () => { clearInterval(timer); sample(); return peak; } };
}

/** The block device holding `path`, as /proc/diskstats names it. */
export function deviceOf(path: string): string {
  const dev = statSync(path).dev;
  const major = Math.floor(dev / 256), minor = dev % 256;
  const row = readFileSync('/proc/diskstats', 'utf8').split('\n').map((l) => l.trim().split(/\s+/))
    .find((f) => Number(f[0]) === major && Number(f[1]) === minor);
  if (!row) throw new Error(`no /proc/diskstats entry for ${major}:${minor} (${path})`);
  return row[2];
}

/** Bytes the device has written since boot, once everything dirty has been flushed. */
export function deviceBytesWritten(device: string): number {
  execFileSync('sync');
  const row = readFileSync('/proc/diskstats', 'utf8').split('\n').map((l) => l.trim().split(/\s+/)).find((f) => f[2] === device);
  if (!row) throw new Error(`device ${device} left /proc/diskstats`);
  return Number(row[9]) * 512;
}

function hexAddress(address: string, port: number): string {
  const ip = address.split('.').map((o) => Number(o).toString(16).padStart(2, '0')).reverse().join('').toUpperCase();
  return `${ip}:${port.toString(16).toUpperCase().padStart(4, '0')}`;
}

/**
 * The most connections any one client held open at once to address:port, sampled. Brief ones (a
 * connection refused at the banner lives a millisecond or so) can fall between samples. `side`
 * says whose sockets are counted: the server's (as the destination sees them; a socket the client
 * has just closed may still count for a moment) or the clients' (as the senders hold them).
 */
export function sampleConnections(address: string, port: number, intervalMs = 20, side: 'server' | 'client' = 'server'): { stop(): number } {
  const target = hexAddress(address, port);
  let peak = 0;
  const sample = () => {
    const perClient = new Map<string, number>();
    // The table is read in pieces while it changes: a socket can be listed twice, so each counts once.
    const seen = new Set<string>();
    for (const line of readFileSync('/proc/net/tcp', 'utf8').split('\n').slice(1)) {
      const f = line.trim().split(/\s+/);
      if (seen.has(`${f[1]} ${f[2]}`)) continue;
      seen.add(`${f[1]} ${f[2]}`);
      // State 01 is ESTABLISHED.
      if (f[side === 'server' ? 1 : 2] !== target || f[3] !== '01') continue;
      const client = f[side === 'server' ? 2 : 1].split(':')[0];
      perClient.set(client, (perClient.get(client) ?? 0) + 1);
    }
    peak = Math.max(peak, ...perClient.values());
  };
  const timer = setInterval(sample, intervalMs);
  return { stop: () => { clearInterval(timer); sample(); return peak; } };
}
