// What the queue measures for the admission's pressure signals: the time of each spool fsync and
// the free share of the spool's file system, read from a real spool on the real disk.
import { mkdtemp, rm, statfs } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { describe, expect, it } from 'vitest';
import { parseConfig } from '../mta/mta-config.js';
import { SpaceGuard } from './queue-space.js';
import { Spool } from './queue-spool.js';

async function commitOne(spool: Spool, id: string): Promise<void> {
  const w = await spool.createWriter(id);
  w.write(Buffer.from('Subject: x\r\n\r\nhello\r\n'));
  await w.commit(21);
}

describe('the queue\'s pressure signals', () => {
  it('times each fsync of a committed message (the file and its folder) into the spool\'s window', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'ichidan-fsync-'));
    try {
      const spool = new Spool(dir, true);
      await spool.init();
      const samples: number[] = [];
      spool.fsyncs.onSample = (ms) => samples.push(ms);
      expect(spool.fsyncs.worst(99, 60_000)).toBeNull();
      await commitOne(spool, 'a1');
      expect(samples).toHaveLength(2);
      for (const ms of samples) expect(ms).toBeGreaterThan(0);
      expect(spool.fsyncs.worst(99, 60_000)).toBe(Math.max(...samples));
      await spool.close();
      // With queue.fsync off nothing is synced, so nothing is timed.
      const unsynced = new Spool(dir, false);
      await commitOne(unsynced, 'a2');
      expect(unsynced.fsyncs.worst(99, 60_000)).toBeNull();
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('gives the free share of the folders\' file system, unknown before the first look', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'ichidan-share-'));
    try {
      const guard = new SpaceGuard([dir], join(dir, 'reserve'), parseConfig({ queue: { minFree: 0, reserve: 0 } }), pino({ level: 'silent' }));
      expect(guard.freeShare).toBeNull();
      await guard.start();
      guard.stop();
      const s = await statfs(dir);
      expect(guard.freeShare).toBeGreaterThan(0);
      expect(guard.freeShare).toBeLessThanOrEqual(1);
      expect(Math.abs(guard.freeShare! - s.bavail / s.blocks)).toBeLessThan(0.01);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
