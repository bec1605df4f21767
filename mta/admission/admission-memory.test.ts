import { mkdtemp, mkdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { cgroupMemoryFree, hostMemoryFree, memoryFree } from './admission-memory.js';

const MB = 2 ** 20;

describe('memory free', () => {
  const dirs: string[] = [];
  afterEach(async () => { for (const d of dirs.splice(0)) await rm(d, { recursive: true, force: true }); });
  const cgroup = async (files: Record<string, string>) => {
    const dir = await mkdtemp(join(tmpdir(), 'ichidan-cgroup-'));
    dirs.push(dir);
    for (const [name, text] of Object.entries(files)) {
      await mkdir(join(dir, name, '..'), { recursive: true });
      await writeFile(join(dir, name), text);
    }
    return dir;
  };

  it('reads a cgroup v2 limit: usage less inactive page cache, over the limit', async () => {
    const dir = await cgroup({ 'memory.max': `${1000 * MB}\n`, 'memory.current': `${900 * MB}\n`, 'memory.stat': `anon ${700 * MB}\nfile ${200 * MB}\ninactive_file ${100 * MB}\nactive_file ${100 * MB}\n` });
    expect(cgroupMemoryFree(dir)).toBeCloseTo(0.2);
    // The host has plenty: the cgroup's share is the one that counts.
    expect(memoryFree(dir, undefined, () => 0.9)).toBeCloseTo(0.2);
    // ... unless the host itself has less.
    expect(memoryFree(dir, undefined, () => 0.05)).toBe(0.05);
  });

  it('reads a cgroup v1 limit the same way', async () => {
    const dir = await cgroup({ 'memory/memory.limit_in_bytes': `${512 * MB}\n`, 'memory/memory.usage_in_bytes': `${500 * MB}\n`, 'memory/memory.stat': `cache ${50 * MB}\ntotal_inactive_file ${12 * MB}\n` });
    expect(cgroupMemoryFree(dir)).toBeCloseTo(24 / 512);
  });

  it('falls back to the host where the cgroup sets no limit, or has no files to read', async () => {
    const unlimited = await cgroup({ 'memory.max': 'max\n', 'memory.current': `${900 * MB}\n` });
    expect(cgroupMemoryFree(unlimited)).toBeNull();
    const v1Unlimited = await cgroup({ 'memory/memory.limit_in_bytes': '9223372036854771712\n', 'memory/memory.usage_in_bytes': `${900 * MB}\n` });
    expect(cgroupMemoryFree(v1Unlimited)).toBeNull();
    const empty = await cgroup({});
    expect(cgroupMemoryFree(empty)).toBeNull();
    expect(cgroupMemoryFree(await cgroup({ 'memory.max': 'garbage', 'memory.current': '1' }))).toBeNull();
    expect(memoryFree(empty, undefined, () => 0.4)).toBe(0.4);
    expect(memoryFree(empty, undefined, () => null)).toBeNull();
    // Over its limit (usage can pass memory.max briefly): nothing free, not a negative share.
    expect(cgroupMemoryFree(await cgroup({ 'memory.max': `${100 * MB}`, 'memory.current': `${120 * MB}` }))).toBe(0);
  });

  it('reads this machine: a share between 0 and 1', () => {
    const host = hostMemoryFree()!;
    expect(host).toBeGreaterThan(0);
    expect(host).toBeLessThanOrEqual(1);
    const here = memoryFree()!;
    expect(here).toBeGreaterThanOrEqual(0);
    expect(here).toBeLessThanOrEqual(host);
  });
});
