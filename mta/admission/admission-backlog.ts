/*
 * Connections the kernel holds for the admission listeners that Ichidan has not accepted yet: the
 * accept queue, the first place a flood shows. While it grows, every client waits in it in arrival
 * order, known senders among the flood's, before Ichidan can tell who they are; a session count
 * sees them only once accepted.
 *
 * Takes: the listening endpoints (address and port, as bound: the admission listeners' own and
 *   the DNS responder's pairing addresses they also take) and the kernel's socket tables (Linux:
 *   /proc/net/tcp and /proc/net/tcp6, where a listening socket's rx_queue is its accept queue's
 *   length). An endpoint is matched by its address and port (IPv6 ones too, in their canonical
 *   form); a wildcard one (0.0.0.0 or ::) takes both tables' wildcard sockets on its port.
 * Gives: the connections waiting, summed over the endpoints; null where the tables cannot be read
 *   (another system), and the signal then counts as normal.
 * Cost: the kernel lists listening sockets before all others, so a table is read only up to its
 *   first socket that is not listening, a page at a time — a flood's tens of thousands of TIME_WAIT
 *   entries are never read (reading them all twice a second would itself stall the event loop) —
 *   and only the tables an endpoint can be in (IPv4 listeners only: /proc/net/tcp6 is not read).
 */
import { closeSync, openSync, readSync } from 'node:fs';
import { isIPv4, isIPv6 } from 'node:net';

const LISTEN = '0A';

export interface Endpoint {
  address: string;
  port: number;
}

/** "0100007F" (as /proc/net/tcp writes 127.0.0.1, little-endian) → "127.0.0.1". */
function ipv4FromHex(hex: string): string {
  const n = Number.parseInt(hex, 16);
  return [n & 0xff, (n >>> 8) & 0xff, (n >>> 16) & 0xff, (n >>> 24) & 0xff].join('.');
}

/** An IPv6 address in its canonical (compressed, lower-case) form. */
function canonicalIPv6(address: string): string {
  return new URL(`http://[${address}]`).hostname.slice(1, -1);
}

/** "00000000000000000000000001000000" (as /proc/net/tcp6 writes ::1: four 32-bit words, each little-endian) → "::1". */
function ipv6FromHex(hex: string): string {
  const groups: string[] = [];
  for (let w = 0; w < 4; w++) {
    const word = hex.slice(w * 8, w * 8 + 8).match(/../g)!.reverse().join('');
    groups.push(word.slice(0, 4), word.slice(4, 8));
  }
  return canonicalIPv6(groups.join(':'));
}

/** The accept-queue lengths of the listening sockets in one table's text, keyed "address port" (IPv6 addresses canonical). */
export function listeningQueues(table: string, v6: boolean): Map<string, number> {
  const out = new Map<string, number>();
  for (const line of table.split('\n').slice(1)) {
    const f = line.trim().split(/\s+/);
    if (f.length < 5 || f[3] !== LISTEN) continue;
    const [addr, port] = f[1].split(':');
    const queue = Number.parseInt(f[4].split(':')[1] ?? '', 16);
    if (!port || !Number.isFinite(queue)) continue;
    const key = `${v6 ? ipv6FromHex(addr) : ipv4FromHex(addr)} ${Number.parseInt(port, 16)}`;
    out.set(key, (out.get(key) ?? 0) + queue);
  }
  return out;
}

/** A socket table up to its first entry that is not a listening socket (the listening ones come first). */
export function readListening(file: string): string {
  const fd = openSync(file, 'r');
  try {
    // The kernel formats as many entries as a read has room for, connections past the listening
    // sockets included: a page at a time, three times cheaper than 16 KB under a connection churn.
    const chunk = Buffer.alloc(4096);
    let text = '';
    for (;;) {
      const n = readSync(fd, chunk, 0, chunk.length, null);
      if (n === 0) return text;
      text += chunk.toString('latin1', 0, n);
      // Past the header line, a complete line whose state is not LISTEN ends the listening part.
      const lines = text.split('\n');
      for (let i = 1; i < lines.length - 1; i++) {
        if (lines[i].trim().split(/\s+/)[3] !== LISTEN) return lines.slice(0, i).join('\n');
      }
    }
  } finally {
    closeSync(fd);
  }
}

/** Connections waiting to be accepted on `endpoints`, or null when the kernel's tables cannot be read. */
export function acceptQueue(endpoints: readonly Endpoint[], read = readListening): number | null {
  // No listener under admission (a proxy-only node, say): the tables are not read at all. Even their
  // listening part costs the kernel a walk of its whole connection hash on every read.
  if (endpoints.length === 0) return 0;
  // A table no endpoint can be in is not read either (listeners on IPv4 addresses only: no tcp6).
  const wildcard = endpoints.some((e) => e.address === '0.0.0.0' || e.address === '::');
  let v4: Map<string, number> = new Map();
  let v6: Map<string, number> = new Map();
  const readV4 = wildcard || endpoints.some((e) => isIPv4(e.address));
  if (readV4) {
    try {
      v4 = listeningQueues(read('/proc/net/tcp'), false);
    } catch {
      return null;
    }
  }
  if (wildcard || endpoints.some((e) => isIPv6(e.address))) {
    try {
      v6 = listeningQueues(read('/proc/net/tcp6'), true);
    } catch {
      // No IPv6 on this system: the IPv4 table answers alone, if it was read.
      if (!readV4) return null;
    }
  }
  let waiting = 0;
  const seen = new Set<string>();
  const add = (table: Map<string, number>, key: string) => {
    if (seen.has(key)) return;
    seen.add(key);
    waiting += table.get(key) ?? 0;
  };
  for (const e of endpoints) {
    if (e.address === '0.0.0.0' || e.address === '::') {
      add(v4, `0.0.0.0 ${e.port}`);
      add(v6, `:: ${e.port}`);
    } else if (isIPv4(e.address)) add(v4, `${e.address} ${e.port}`);
    else if (isIPv6(e.address)) add(v6, `${canonicalIPv6(e.address)} ${e.port}`);
  }
  return waiting;
}
