/*
 * The program the kernel runs on each new connection to an admission listener to choose its
 * accept queue: a known sender's SYN goes to a queue of its own, so under a flood it never waits
 * behind the flood's connections before Ichidan can tell who it is (ingress-known-queue.ts owns
 * the sockets; this file only writes the program).
 *
 * Takes: networks in the order they matter (trusted and tenants' networks, pinned, then known
 *   senders most recently seen first), as addresses or CIDR ("192.0.2.0/24",
 *   "2001:db8:0:0:0:0:0:0/64"; an IPv4-mapped IPv6 network counts as its IPv4 one).
 * Gives: `knownFilter` — a classic BPF program (struct sock_filter, 8 bytes each, little-endian as
 *   on the machines Ichidan runs on) for SO_ATTACH_REUSEPORT_CBPF that answers GENERAL_QUEUE (0)
 *   for a source address in a blocked network (the door refuses those for good, and says so),
 *   KNOWN_QUEUE (1) for one in a known network, and for any other GENERAL_QUEUE, or REFUSE_QUEUE
 *   (2) while unknown senders are refused at connect; how many networks it holds and how many did
 *   not fit (the kernel takes at most 4,096 instructions: about 2,000 IPv4 networks of one prefix
 *   length, 584 IPv6 /64s; blocked ones go first).
 * The program reads the source address from the IP header (SKF_NET_OFF): IPv4 at byte 12, IPv6 at
 *   byte 8. IPv6 networks are matched on their first 64 bits at most: a longer prefix counts as
 *   its /64, which may steer a few more clients to the known queue; the door still decides on
 *   each of them by its own entries, so it grants nothing but the queue.
 */
import { isIP } from 'node:net';

export const GENERAL_QUEUE = 0;
export const KNOWN_QUEUE = 1;
/** Under overload (admission.overload.refuse: connect): unknown senders' connections, answered 421 by a thread of their own. */
export const REFUSE_QUEUE = 2;
/** BPF_MAXINSNS: the kernel refuses a longer classic program. */
export const MAX_INSTRUCTIONS = 4096;

// Classic BPF opcodes (linux/filter.h, linux/bpf_common.h).
const LD_W_ABS = 0x20;
const LD_B_ABS = 0x30;
const ALU_AND_K = 0x54;
const ALU_RSH_K = 0x74;
const JMP_JA = 0x05;
const JMP_JEQ_K = 0x15;
const RET_K = 0x06;
/** Negative offsets from here reach the network header instead of the data (linux/filter.h). */
const SKF_NET_OFF = -0x100000;

export interface Instruction {
  code: number;
  jt: number;
  jf: number;
  k: number;
}

interface Network4 {
  family: 4;
  word: number;
  mask: number;
}

interface Network6 {
  family: 6;
  /** The first two 32-bit words of the address, masked. */
  words: [number, number];
  masks: [number, number];
}

type Network = Network4 | Network6;

/** The mask of a prefix's bits that fall in one 32-bit word starting at bit `from`. */
function wordMask(prefix: number, from: number): number {
  const bits = Math.max(0, Math.min(32, prefix - from));
  return bits === 0 ? 0 : (0xffffffff << (32 - bits)) >>> 0;
}

/** The eight 16-bit groups of an IPv6 address (which `isIP` has already said is one). */
function ipv6Groups(address: string): number[] {
  let text = address;
  const dotted = /(\d+\.\d+\.\d+\.\d+)$/.exec(text);
  if (dotted) {
    const b = dotted[1].split('.').map(Number);
    text = `${text.slice(0, dotted.index)}${((b[0] << 8) | b[1]).toString(16)}:${((b[2] << 8) | b[3]).toString(16)}`;
  }
  const [head, tail] = text.includes('::') ? text.split('::') : [text, null];
  const left = head ? head.split(':') : [];
  const right = tail ? tail.split(':') : [];
  const middle = tail === null ? [] : new Array<string>(8 - left.length - right.length).fill('0');
  return [...left, ...middle, ...right].map((g) => Number.parseInt(g, 16));
}

function ipv4Word(address: string): number {
  return address.split('.').reduce((w, b) => ((w << 8) | Number(b)) >>> 0, 0);
}

/** A network as the program compares it, or null for text that is none. */
export function parseNetwork(text: string): Network | null {
  const [address, bits, extra] = text.trim().split('/');
  const family = isIP(address);
  if (family === 0 || extra !== undefined || (bits !== undefined && !/^\d+$/.test(bits))) return null;
  const prefix = bits === undefined ? (family === 4 ? 32 : 128) : Number(bits);
  if (prefix > (family === 4 ? 32 : 128)) return null;
  if (family === 4) {
    const mask = wordMask(prefix, 0);
    return { family: 4, word: (ipv4Word(address) & mask) >>> 0, mask };
  }
  const g = ipv6Groups(address);
  const mapped = g.slice(0, 5).every((x) => x === 0) && g[5] === 0xffff;
  if (mapped && prefix >= 96) {
    const mask = wordMask(prefix - 96, 0);
    return { family: 4, word: ((((g[6] << 16) | g[7]) >>> 0) & mask) >>> 0, mask };
  }
  const masks: [number, number] = [wordMask(prefix, 0), wordMask(prefix, 32)];
  const words: [number, number] = [((((g[0] << 16) | g[1]) >>> 0) & masks[0]) >>> 0, ((((g[2] << 16) | g[3]) >>> 0) & masks[1]) >>> 0];
  return { family: 6, words, masks };
}

function ret(k: number): Instruction {
  return { code: RET_K, jt: 0, jf: 0, k };
}

function load(code: number, offset: number): Instruction {
  return { code, jt: 0, jf: 0, k: (SKF_NET_OFF + offset) >>> 0 };
}

type Queued<T> = T & { queue: number };

/**
 * IPv4 networks grouped by mask within each queue's run (blocked ones first, so that a blocked
 * network inside a known one is not taken for known): one load and mask per group, then two
 * instructions a network; `others` for the rest.
 */
function ipv4Part(networks: Array<Queued<Network4>>, others: number): Instruction[] {
  const groups = new Map<string, { queue: number; mask: number; words: number[] }>();
  for (const n of networks) {
    const key = `${n.queue} ${n.mask}`;
    const group = groups.get(key) ?? { queue: n.queue, mask: n.mask, words: [] };
    group.words.push(n.word);
    groups.set(key, group);
  }
  const out: Instruction[] = [];
  for (const { queue, mask, words } of groups.values()) {
    out.push(load(LD_W_ABS, 12), { code: ALU_AND_K, jt: 0, jf: 0, k: mask });
    for (const word of words) out.push({ code: JMP_JEQ_K, jt: 0, jf: 1, k: word }, ret(queue));
  }
  out.push(ret(others));
  return out;
}

function ipv6Cost(n: Network6): number {
  return n.masks[1] === 0 ? 4 : 7;
}

/** Each IPv6 network on its own, in order: its first word, then (a prefix past 32 bits) its second; `others` for the rest. */
function ipv6Part(networks: Array<Queued<Network6>>, others: number): Instruction[] {
  const out: Instruction[] = [];
  for (const n of networks) {
    out.push(load(LD_W_ABS, 8), { code: ALU_AND_K, jt: 0, jf: 0, k: n.masks[0] });
    if (n.masks[1] === 0) {
      out.push({ code: JMP_JEQ_K, jt: 0, jf: 1, k: n.words[0] }, ret(n.queue));
    } else {
      out.push({ code: JMP_JEQ_K, jt: 0, jf: 4, k: n.words[0] }, load(LD_W_ABS, 12), { code: ALU_AND_K, jt: 0, jf: 0, k: n.masks[1] },
        { code: JMP_JEQ_K, jt: 0, jf: 1, k: n.words[1] }, ret(n.queue));
    }
  }
  out.push(ret(others));
  return out;
}

export interface KnownFilter {
  program: Buffer;
  instructions: Instruction[];
  /** Known networks in the program. */
  networks: number;
  /** Known networks given that did not fit (the last ones given), or that were no network. */
  left: number;
  /** Blocked networks in the program, and those that did not fit. */
  blocked: number;
  blockedLeft: number;
}

export interface FilterOptions {
  /** Networks whose clients the door refuses for good: the general queue, where it can say so, even inside a known network. */
  blocked?: readonly string[];
  /** The queue of every other client: GENERAL_QUEUE, or REFUSE_QUEUE while unknown senders are refused at connect. */
  others?: number;
  maxInstructions?: number;
}

/** The program for `networks` (the known queue's), the first ones first when they do not all fit; blocked networks before them. */
export function knownFilter(networks: readonly string[], options: FilterOptions = {}): KnownFilter {
  const { blocked = [], others = GENERAL_QUEUE, maxInstructions = MAX_INSTRUCTIONS } = options;
  // The header (version check and the jump to the IPv6 part) and the two parts' final returns.
  let used = 4 + 2;
  const v4: Array<Queued<Network4>> = [];
  const v6: Array<Queued<Network6>> = [];
  const groups = new Set<string>();
  const seen = new Set<string>();
  const count = { [GENERAL_QUEUE]: { in: 0, left: 0 }, [KNOWN_QUEUE]: { in: 0, left: 0 } } as Record<number, { in: number; left: number }>;
  const add = (text: string, queue: number) => {
    const n = parseNetwork(text);
    if (!n) {
      count[queue].left++;
      return;
    }
    const id = n.family === 4 ? `4 ${n.word} ${n.mask}` : `6 ${n.words} ${n.masks}`;
    if (seen.has(id)) return;
    const group = `${queue} ${n.family === 4 ? n.mask : ''}`;
    const cost = n.family === 4 ? 2 + (groups.has(group) ? 0 : 2) : ipv6Cost(n);
    if (used + cost > maxInstructions) {
      count[queue].left++;
      return;
    }
    used += cost;
    seen.add(id);
    count[queue].in++;
    if (n.family === 4) {
      groups.add(group);
      v4.push({ ...n, queue });
    } else v6.push({ ...n, queue });
  };
  for (const text of blocked) add(text, GENERAL_QUEUE);
  for (const text of networks) add(text, KNOWN_QUEUE);
  const four = ipv4Part(v4, others);
  const instructions: Instruction[] = [
    load(LD_B_ABS, 0),
    { code: ALU_RSH_K, jt: 0, jf: 0, k: 4 },
    { code: JMP_JEQ_K, jt: 1, jf: 0, k: 4 },
    // Not IPv4: past the IPv4 part (longer than a conditional jump's 255 can reach).
    { code: JMP_JA, jt: 0, jf: 0, k: four.length },
    ...four,
    ...ipv6Part(v6, others),
  ];
  const program = Buffer.alloc(instructions.length * 8);
  instructions.forEach((ins, i) => {
    program.writeUInt16LE(ins.code, i * 8);
    program.writeUInt8(ins.jt, i * 8 + 2);
    program.writeUInt8(ins.jf, i * 8 + 3);
    program.writeUInt32LE(ins.k >>> 0, i * 8 + 4);
  });
  return {
    program, instructions,
    networks: count[KNOWN_QUEUE].in, left: count[KNOWN_QUEUE].left,
    blocked: count[GENERAL_QUEUE].in, blockedLeft: count[GENERAL_QUEUE].left,
  };
}
