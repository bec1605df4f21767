import { mkdtemp, rm, stat } from 'node:fs/promises';
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
});
