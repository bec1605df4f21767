/*
 * The memory this process may still use, as a share of what it may use in all: the pressure's
 * memoryFree signal. On a host that share is the system's available memory over its total; in a
 * container (or a systemd unit with MemoryMax) the limit that counts is the cgroup's, which the host's
 * figures do not show: a node at its cgroup limit is killed while the host still has plenty free.
 *
 * Takes: the cgroup file system (cgroup v2: memory.max, memory.current and memory.stat's
 *   inactive_file at its root; v1: memory/memory.limit_in_bytes, memory.usage_in_bytes and
 *   memory.stat's total_inactive_file) and the host's figures (os.freemem, which is MemAvailable on
 *   Linux, over os.totalmem).
 * Gives: the smaller of the two shares; the host's alone where no cgroup limit is set ("max", or v1's
 *   page-rounded 2^63) or the files cannot be read. The cgroup's usage counts its page cache, which
 *   the kernel reclaims before it kills anyone: its inactive part is left out, as the kernel's own
 *   MemAvailable leaves it out.
 */
import { readFileSync } from 'node:fs';
import { freemem, totalmem } from 'node:os';
import { join } from 'node:path';

/** v1 writes "no limit" as the largest page-aligned 64-bit value; anything past 2^60 bytes is none. */
const NO_LIMIT = 2 ** 60;

type Read = (file: string) => string;
const readText: Read = (file) => readFileSync(file, 'utf8');

function statField(text: string, field: string): number {
  const m = new RegExp(`^${field} (\\d+)$`, 'm').exec(text);
  return m ? Number(m[1]) : 0;
}

/** The cgroup's free share (limit less usage less inactive page cache, over the limit), or null when it sets no limit. */
export function cgroupMemoryFree(root = '/sys/fs/cgroup', read: Read = readText): number | null {
  const tryRead = (file: string): string | null => {
    try {
      return read(join(root, file)).trim();
    } catch {
      return null;
    }
  };
  const v2 = tryRead('memory.max');
  const [limitText, usageText, statText, inactive] = v2 !== null
    ? [v2, tryRead('memory.current'), tryRead('memory.stat'), 'inactive_file']
    : [tryRead('memory/memory.limit_in_bytes'), tryRead('memory/memory.usage_in_bytes'), tryRead('memory/memory.stat'), 'total_inactive_file'];
  if (limitText === null || usageText === null || limitText === 'max') return null;
  const limit = Number(limitText), usage = Number(usageText);
  if (!Number.isFinite(limit) || !Number.isFinite(usage) || limit <= 0 || limit >= NO_LIMIT) return null;
  const used = Math.max(0, usage - (statText ? statField(statText, inactive) : 0));
  return Math.max(0, limit - used) / limit;
}

/** The host's available memory over its total, or null when the total is unknown. */
export function hostMemoryFree(): number | null {
  const total = totalmem();
  return total > 0 ? freemem() / total : null;
}

/** The memoryFree signal: the smaller of the cgroup's share (where it sets a limit) and the host's. */
export function memoryFree(root = '/sys/fs/cgroup', read: Read = readText, host: () => number | null = hostMemoryFree): number | null {
  const shares = [cgroupMemoryFree(root, read), host()].filter((s): s is number => s !== null);
  return shares.length > 0 ? Math.min(...shares) : null;
}
