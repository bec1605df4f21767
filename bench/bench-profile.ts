/*
 * Summaries of V8 CPU profiles (`node --cpu-prof`), so a benchmark report can say where a relay's
 * CPU went without a profiler UI.
 *
 * Takes: a folder of .cpuprofile files (one per thread: Ichidan's main thread and its queue
 * writer thread each write one).
 * Gives: per profile, its thread's busy (sampled, not idle) time and how long it ran; the functions with the most self
 * time (name, file and line, milliseconds and share); the same time charged to the nearest
 * JavaScript function of Ichidan or of a package up the stack, so that time spent in Node's
 * internals and native code (writes, hashing, fsync) shows against the code that asked for it; and
 * the self time grouped by where the code lives: Ichidan's own folders, each npm package, Node's
 * internals, native code, garbage collection.
 */
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';

interface ProfileNode { id: number; callFrame: { functionName: string; url: string; lineNumber: number }; children?: number[] }
interface CpuProfile { nodes: ProfileNode[]; startTime: number; endTime: number; samples: number[]; timeDeltas: number[] }

export interface Hotspot { name: string; where: string; ms: number; share: number }

export interface ProfileSummary {
  file: string;
  /** Sampled time other than idle, in ms. */
  busyMs: number;
  /** How long the thread was profiled (its whole life), in ms. */
  spanMs: number;
  top: Hotspot[];
  /** Self time of everything beneath the nearest Ichidan or package function, charged to it. */
  topCallers: Hotspot[];
  byOrigin: Array<{ origin: string; ms: number; share: number }>;
}

/** Which body of code a script URL belongs to. */
function originOf(url: string, functionName: string): string {
  if (!url) return /^\((garbage collector|program|idle)\)$/.test(functionName) ? functionName : '(native)';
  const pkg = /node_modules\/((?:@[^/]+\/)?[^/]+)/.exec(url);
  if (pkg) return `npm ${pkg[1]}`;
  if (url.startsWith('node:')) return 'node internals';
  const own = /\/dist\/([^/]+)\//.exec(url);
  return own ? `ichidan ${own[1]}/` : url;
}

const isOwnOrPackage = (url: string) => /\/(dist|node_modules)\//.test(url);

function charge(table: Map<string, Hotspot>, node: ProfileNode, us: number): void {
  const { functionName, url, lineNumber } = node.callFrame;
  const short = url.includes('/node_modules/') ? url.slice(url.lastIndexOf('/node_modules/') + 1) : url.replace(/^.*\/dist\//, 'dist/');
  const where = url ? `${short}:${lineNumber + 1}` : '';
  const key = `${functionName}@${where}`;
  const h = table.get(key) ?? { name: functionName || '(anonymous)', where, ms: 0, share: 0 };
  h.ms += us / 1000;
  table.set(key, h);
}

function summarize(file: string, profile: CpuProfile, topN: number): ProfileSummary {
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  const parent = new Map<number, number>();
  for (const n of profile.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
  const selfUs = new Map<number, number>();
  profile.samples.forEach((id, i) => selfUs.set(id, (selfUs.get(id) ?? 0) + (profile.timeDeltas[i] ?? 0)));
  const perFunction = new Map<string, Hotspot>();
  const perCaller = new Map<string, Hotspot>();
  const perOrigin = new Map<string, number>();
  let busyUs = 0;
  for (const [id, us] of selfUs) {
    const node = byId.get(id)!;
    const origin = originOf(node.callFrame.url, node.callFrame.functionName);
    perOrigin.set(origin, (perOrigin.get(origin) ?? 0) + us);
    if (origin === '(idle)') continue;
    busyUs += us;
    charge(perFunction, node, us);
    let caller: ProfileNode | undefined = node;
    while (caller && !isOwnOrPackage(caller.callFrame.url)) caller = byId.get(parent.get(caller.id) ?? -1);
    charge(perCaller, caller ?? node, us);
  }
  const share = (ms: number) => (busyUs ? ms / (busyUs / 1000) : 0);
  const ranked = (table: Map<string, Hotspot>) => [...table.values()].sort((a, b) => b.ms - a.ms).slice(0, topN).map((h) => ({ ...h, share: share(h.ms) }));
  const top = ranked(perFunction);
  const topCallers = ranked(perCaller);
  const byOrigin = [...perOrigin].filter(([o]) => o !== '(idle)').map(([origin, us]) => ({ origin, ms: us / 1000, share: share(us / 1000) }))
    .sort((a, b) => b.ms - a.ms);
  return { file, busyMs: busyUs / 1000, spanMs: (profile.endTime - profile.startTime) / 1000, top, topCallers, byOrigin };
}

export async function summarizeProfiles(dir: string, topN = 15): Promise<ProfileSummary[]> {
  const files = (await readdir(dir)).filter((f) => f.endsWith('.cpuprofile')).sort();
  const out: ProfileSummary[] = [];
  for (const f of files) out.push(summarize(f, JSON.parse(await readFile(join(dir, f), 'utf8')) as CpuProfile, topN));
  return out.sort((a, b) => b.busyMs - a.busyMs);
}
