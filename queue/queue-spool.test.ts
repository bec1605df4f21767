import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { KEEP_IN_MEMORY_MAX, Spool } from './queue-spool.js';

describe('a spool writer', () => {
  let dir: string;
  let spool: Spool;
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'ichidan-spool-'));
    spool = new Spool(dir, false);
    await spool.init();
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  async function written(chunks: Buffer[]) {
    const writer = await spool.createWriter('m1');
    for (const c of chunks) writer.write(c);
    const total = chunks.reduce((n, c) => n + c.length, 0);
    await writer.finishUnsynced(total);
    return { writer, file: await readFile(writer.path), total };
  }

  it('keeps a message a little past 64 KB in memory as well as in its file (a "64 KB" message with its header fields)', async () => {
    const { writer, file } = await written([Buffer.alloc(65_532, 'a'), Buffer.alloc(700, 'b')]);
    expect(writer.kept).not.toBeNull();
    expect(Buffer.concat(writer.kept!).equals(file)).toBe(true);
  });

  it('keeps exactly KEEP_IN_MEMORY_MAX bytes, and drops what it kept once a write goes past it (the file still gets every byte)', async () => {
    const atLimit = await written([Buffer.alloc(KEEP_IN_MEMORY_MAX - 1, 'a'), Buffer.from('b')]);
    expect(Buffer.concat(atLimit.writer.kept!).equals(atLimit.file)).toBe(true);
    await spool.remove('m1');
    const past = await written([Buffer.alloc(KEEP_IN_MEMORY_MAX, 'a'), Buffer.from('b')]);
    expect(past.writer.kept).toBeNull();
    expect(past.file.length).toBe(KEEP_IN_MEMORY_MAX + 1);
  });
});
