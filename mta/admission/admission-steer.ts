/*
 * Which mail hosts an MX answer names: the steering decision of the DNS responder, as a pure
 * function of what is known when the question arrives.
 *
 * Takes: the configured `primary` and `overflow` hosts (admission.dns.*), in a cluster the live
 * nodes with their load and level, this node's level, the MX query rate against its normal level
 * (admission-rate.ts) and its overload threshold (admission.pressure.mxQueries.overload), and
 * the asking resolver's standing (KnownSenders.resolverStanding).
 * Gives: the mode (normal or high load, and why), the mechanism that chose the answer (counted
 * in ichidan_dns_answers_total) and the hosts with their MX preferences.
 *
 *   normal  the primary hosts: the configured ones plus the live nodes (overflow nodes left out),
 *           the least loaded first; hosts at the same level and load share a preference, so
 *           senders spread over them (RFC 5321 5.1).
 *   high    entered when MX queries surge (ratio at or past the overload threshold), when this
 *           node is overloaded, or when most primary hosts are. Resolvers that are known or
 *           pinned get the primary hosts; all others (blocked ones too) the overflow hosts that
 *           are not overloaded themselves. When there are none the answer is SERVFAIL: a sending
 *           MTA takes it as a temporary failure and retries later, so nothing is lost. (The paper
 *           suggests naming a host that does not exist; a sender may take that as permanent and
 *           bounce, and a null MX (RFC 7505) is permanent by definition, so neither is used.)
 */
import { isKnown, type Level, type Standing } from './admission-decide.js';

export type { Level, Standing };

export interface NodeInfo { name: string; address: string; load: number; level: Level }
export interface HostSpec { name: string; address: string }

export type SteerMode = 'normal' | 'high';
export type SteerMechanism = 'primary' | 'known' | 'overflow' | 'servfail';

export interface MxHost { name: string; address: string; preference: number }

export interface SteerInput {
  primary: readonly HostSpec[];
  overflow: readonly HostSpec[];
  /** The cluster's live nodes (this one included); null without a cluster. */
  nodes: readonly NodeInfo[] | null;
  level: Level;
  mxQueryRatio: number | null;
  /** admission.pressure.mxQueries.overload */
  overloadRatio: number;
}

export interface Steering {
  mode: SteerMode;
  /** Why the mode is high ('' in normal mode). */
  why: string;
  mechanism: SteerMechanism;
  hosts: MxHost[];
}

const LEVEL_RANK: Record<Level, number> = { normal: 0, busy: 1, overload: 2 };

/** A configured host with what the cluster says of the node at its address (unknown: assumed normal and idle). */
function withState(host: HostSpec, nodes: readonly NodeInfo[] | null): NodeInfo {
  const node = nodes?.find((n) => sameAddress(n.address, host.address));
  return { name: host.name, address: host.address, load: node?.load ?? 0, level: node?.level ?? 'normal' };
}

function sameAddress(a: string, b: string): boolean {
  return a.toLowerCase() === b.toLowerCase();
}

/** The configured primary hosts and the live nodes that are not overflow hosts, each address once. */
export function primaryHosts(input: Pick<SteerInput, 'primary' | 'overflow' | 'nodes'>): NodeInfo[] {
  const hosts = input.primary.map((h) => withState(h, input.nodes));
  for (const node of input.nodes ?? []) {
    if (input.overflow.some((h) => sameAddress(h.address, node.address))) continue;
    if (hosts.some((h) => sameAddress(h.address, node.address))) continue;
    hosts.push(node);
  }
  return hosts;
}

/** Hosts ordered by level, then load (then name, so equal answers stay stable), with preferences 10, 20, … per distinct (level, load). */
export function byLoad(hosts: readonly NodeInfo[]): MxHost[] {
  const sorted = [...hosts].sort((a, b) => LEVEL_RANK[a.level] - LEVEL_RANK[b.level] || a.load - b.load || a.name.localeCompare(b.name));
  let preference = 0;
  let previous: NodeInfo | null = null;
  return sorted.map((h) => {
    if (!previous || previous.level !== h.level || previous.load !== h.load) preference += 10;
    previous = h;
    return { name: h.name, address: h.address, preference };
  });
}

/** Whether the answers are in high-load mode, and why. */
export function highLoad(input: SteerInput): { high: boolean; why: string } {
  if (input.mxQueryRatio !== null && input.mxQueryRatio >= input.overloadRatio) {
    return { high: true, why: `MX queries at ${input.mxQueryRatio.toFixed(1)}x their normal rate` };
  }
  if (input.level === 'overload') return { high: true, why: 'this node is overloaded' };
  const primary = primaryHosts(input);
  const overloaded = primary.filter((h) => h.level === 'overload').length;
  if (primary.length > 0 && overloaded * 2 > primary.length) return { high: true, why: `${overloaded} of ${primary.length} primary hosts overloaded` };
  return { high: false, why: '' };
}

/** The answer for a resolver of the given standing. */
export function steer(input: SteerInput, standing: Standing): Steering {
  const { high, why } = highLoad(input);
  const primary = byLoad(primaryHosts(input));
  if (!high) return primary.length > 0 ? { mode: 'normal', why, mechanism: 'primary', hosts: primary } : servfail('normal', why);
  if (isKnown(standing)) {
    return primary.length > 0 ? { mode: 'high', why, mechanism: 'known', hosts: primary } : servfail('high', why);
  }
  const overflow = byLoad(input.overflow.map((h) => withState(h, input.nodes)).filter((h) => h.level !== 'overload'));
  return overflow.length > 0 ? { mode: 'high', why, mechanism: 'overflow', hosts: overflow } : servfail('high', why);
}

function servfail(mode: SteerMode, why: string): Steering {
  return { mode, why, mechanism: 'servfail', hosts: [] };
}
