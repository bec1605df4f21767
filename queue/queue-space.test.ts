import { mkdtemp, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { describe, expect, it } from 'vitest';
import { parseConfig } from '../mta/mta-config.js';
import { isSpaceError, minFreeBytes, SpaceGuard } from './queue-space.js';

const MB = 1024 * 1024;

describe('queue.minFree', () => {
  it.each([
    ['default with the default message size', {}, 64 * MB],
    ['default grows with limits.maxMessageSize (1.5 ×)', { limits: { maxMessageSize: '100MB' } }, 150 * MB],
    ['set explicitly', { queue: { minFree: '2GB' } }, 2048 * MB],
    ['turned off', { queue: { minFree: 0 } }, 0],
  ])('%s', (_name, input, want) => {
    expect(minFreeBytes(parseConfig(input as never))).toBe(want);
  });

  it('names the key of a bad value', () => {
    expect(() => parseConfig({ queue: { minFree: 'lots' } } as never)).toThrow(/queue\.minFree/);
  });
});

describe('space errors', () => {
  it.each([['ENOSPC', true], ['EDQUOT', true], ['EIO', true], ['SQLITE_FULL', true], ['SQLITE_IOERR_WRITE', true], ['SQLITE_CONSTRAINT', false], ['ENOENT', false], [undefined, false]])('%s → %s', (code, want) => {
    expect(isSpaceError(Object.assign(new Error('x'), { code }))).toBe(want);
  });
});

describe('the space guard', () => {
  it('keeps new mail off the reserve\'s room while the reserve is not held (a start that found it missing)', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'ichidan-space-'));
    const log = pino({ level: 'silent' });
    try {
      const probe = new SpaceGuard([dir], join(dir, 'none'), parseConfig({ queue: { minFree: 0, reserve: 0 } }), log);
      await probe.start();
      probe.stop();
      // Free space sits between minFree and minFree + reserve: the reserve cannot be made.
      const minFree = probe.free - 32 * MB;
      const g = new SpaceGuard([dir], join(dir, 'reserve'), parseConfig({ queue: { minFree, reserve: '64MB' } }), log);
      await g.start();
      expect(g.reserveHeld).toBe(false);
      expect(g.low()).toBe(true);
      expect(g.take(1024)).toBe(false);
      g.stop();
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('refuses when free space is below the threshold plus 1.5 × the declared size, and holds and gives back the reserve', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'ichidan-space-'));
    const reserve = join(dir, 'reserve');
    try {
      const log = pino({ level: 'silent' });
      const ok = new SpaceGuard([dir], reserve, parseConfig({ queue: { minFree: '1MB', reserve: '128KB' } }), log);
      await ok.start();
      expect(ok.free).toBeGreaterThan(2 * MB);
      expect(ok.low()).toBe(false);
      expect(ok.low(ok.free)).toBe(true);
      expect(ok.reserveHeld).toBe(true);
      expect((await stat(reserve)).size).toBe(128 * 1024);
      expect(ok.release()).toBe(true);
      expect(ok.release()).toBe(false);
      await expect(stat(reserve)).rejects.toThrow();
      ok.stop();

      // A threshold above what the disk has: everything is refused and no reserve is made.
      await rm(reserve, { force: true });
      const low = new SpaceGuard([dir], reserve, parseConfig({ queue: { minFree: 1024 ** 5, reserve: '128KB' } }), log);
      await low.start();
      expect(low.low()).toBe(true);
      expect(low.reserveHeld).toBe(false);
      low.stop();
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('holds the reserve in real blocks of bytes that do not compress', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'ichidan-space-'));
    const reserve = join(dir, 'reserve');
    try {
      const g = new SpaceGuard([dir], reserve, parseConfig({ queue: { minFree: '1MB', reserve: '2MB' } }), pino({ level: 'silent' }));
      await g.start();
      g.stop();
      const s = await stat(reserve);
      expect(s.size).toBe(2 * MB);
      expect(s.blocks * 512).toBeGreaterThanOrEqual(2 * MB);
      const bytes = await readFile(reserve);
      // Random bytes: about 1 in 256 is zero; zeros everywhere would compress to nothing.
      expect(bytes.filter((b) => b === 0).length).toBeLessThan(bytes.length / 64);
      for (let at = 0; at < bytes.length; at += 64 * 1024) expect(bytes.subarray(at, at + 4096).some((b) => b !== 0)).toBe(true);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('counts what concurrent transfers write against the free space, and refuses new mail while the reserve is released', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'ichidan-space-'));
    const reserve = join(dir, 'reserve');
    try {
      const log = pino({ level: 'silent' });
      const g = new SpaceGuard([dir], reserve, parseConfig({ queue: { minFree: '1MB', reserve: '128KB' } }), log);
      await g.start();
      g.stop();
      // The threshold 1 MB below the free space of the last look (the cached figure is not looked at again here).
      g.reconfigure(parseConfig({ queue: { minFree: g.free - MB, reserve: '128KB' } }));
      expect(g.low()).toBe(false);
      // Four transfers, each small enough on its own: together they stop at the threshold.
      const granted = Array.from({ length: 4 }, () => g.take(300 * 1024));
      expect(granted).toEqual([true, true, true, false]);
      expect(g.low()).toBe(false);
      expect(g.take(MB - 900 * 1024)).toBe(true);
      expect(g.take(1)).toBe(false);
      expect(g.low(1)).toBe(true);

      // A released reserve: new mail is refused whatever the free space, until it is made again.
      g.reconfigure(parseConfig({ queue: { minFree: '1MB', reserve: '128KB' } }));
      await g.refresh();
      expect(g.low()).toBe(false);
      expect(g.release()).toBe(true);
      expect(g.released).toBe(true);
      expect(g.low()).toBe(true);
      expect(g.take(1)).toBe(false);
      await g.refresh();
      expect(g.reserveHeld).toBe(true);
      expect(g.released).toBe(false);
      expect(g.low()).toBe(false);
      expect(g.take(1)).toBe(true);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
