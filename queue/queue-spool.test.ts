import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { KEEP_IN_MEMORY_MAX, Spool } from './queue-spool.js';

/** A fresh spool in a folder of its own for each test, removed after it. */
function freshSpool(): { dir: string; spool: Spool } {
  const at = { dir: '', spool: null as unknown as Spool };
  beforeEach(async () => {
    at.dir = await mkdtemp(join(tmpdir(), 'ichidan-spool-'));
    at.spool = new Spool(at.dir, false);
    await at.spool.init();
  });
  afterEach(async () => {
    await rm(at.dir, { recursive: true, force: true });
  });
  return at;
}

describe('a spool writer', () => {
  const at = freshSpool();

  async function written(chunks: Buffer[]) {
    const writer = await at.spool.createWriter('m1');
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
    await at.spool.remove('m1');
    const past = await written([Buffer.alloc(KEEP_IN_MEMORY_MAX, 'a'), Buffer.from('b')]);
    expect(past.writer.kept).toBeNull();
    expect(past.file.length).toBe(KEEP_IN_MEMORY_MAX + 1);
  });
});

describe('a spool writer\'s file', () => {
  const at = freshSpool();

  it('gets every byte in order, of a message kept in memory and of one past the limit', async () => {
    const small = await at.spool.createWriter('small');
    small.write(Buffer.from('Subject: a\r\n\r\n'));
    small.write(Buffer.from('body\r\n'));
    await small.finishUnsynced(20);
    expect((await readFile(small.path)).toString()).toBe('Subject: a\r\n\r\nbody\r\n');
    expect(small.bytes).toBe(20);

    const big = await at.spool.createWriter('big');
    const parts = [Buffer.alloc(KEEP_IN_MEMORY_MAX - 10, 'a'), Buffer.alloc(20, 'b'), Buffer.alloc(30, 'c')];
    for (const p of parts) big.write(p);
    await big.finishUnsynced(KEEP_IN_MEMORY_MAX + 40);
    expect((await readFile(big.path)).equals(Buffer.concat(parts))).toBe(true);
    expect(big.kept).toBeNull();
  });

  it('refuses a write past the room it is given, held or not, and a wrong byte count at the end', async () => {
    const writer = await at.spool.createWriter('m', (bytes) => bytes < 100);
    const failed = new Promise<Error>((resolve) => writer.once('error', resolve));
    writer.write(Buffer.alloc(50));
    writer.write(Buffer.alloc(200));
    expect(((await failed) as NodeJS.ErrnoException).code).toBe('ENOSPC');
    const short = await at.spool.createWriter('n');
    short.write(Buffer.from('abc'));
    await expect(short.finishUnsynced(4)).rejects.toMatchObject({ code: 'EIO' });
    await writer.discard();
    await short.discard();
  });

  it('is removed by discard, and removing one already gone is no error', async () => {
    const writer = await at.spool.createWriter('gone');
    writer.write(Buffer.from('x'));
    await writer.discard();
    await expect(readFile(writer.path)).rejects.toMatchObject({ code: 'ENOENT' });
    await at.spool.remove('gone');
    await at.spool.removeAside('gone');
  });
});
