// A full disk during DATA: the spool is a real 512 KB tmpfs that a message fills up; the client gets
// 452 4.3.1, nothing of the message is kept, and mail is taken again once there is room.
import { execFile } from 'node:child_process';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startApp, type TestApp } from './helpers/app.js';
import { heldConfig, sendOne, spoolFiles } from './helpers/held-mail.js';

const run = promisify(execFile);

describe('a full disk during DATA', () => {
  let t: TestApp;
  let dataDir: string;
  beforeAll(async () => {
    dataDir = await mkdtemp(join(tmpdir(), 'ichidan-enospc-'));
    await mkdir(join(dataDir, 'spool'), { recursive: true });
    // A real filesystem that really fills up: a 512 KB tmpfs under the spool.
    await run('mount', ['-t', 'tmpfs', '-o', 'size=512k', 'tmpfs', join(dataDir, 'spool')]);
    // No free-space threshold: this is about the disk filling up during DATA, past any threshold.
    t = await startApp((dir) => ({ ...heldConfig(dir), queue: { ...heldConfig(dir).queue, minFree: 0 } }), { dataDir });
  });
  afterAll(async () => {
    await t?.stop();
    await run('umount', [join(dataDir, 'spool')]).catch(() => undefined);
    await rm(dataDir, { recursive: true, force: true });
  });

  it('answers 452 4.3.1, keeps nothing of the message, and takes mail again once there is room', async () => {
    expect(await sendOne(t.port(), 'small')).toMatch(/^250 2\.0\.0 /);
    const before = await spoolFiles(dataDir);
    const huge = ('y'.repeat(998) + '\r\n').repeat(800); // ~800 KB: more than the filesystem holds
    expect(await sendOne(t.port(), huge)).toMatch(/^452 4\.3\.1 /);
    expect(await spoolFiles(dataDir)).toEqual(before);
    expect(t.app.queue.store.allMessages()).toHaveLength(1);
    expect(await sendOne(t.port(), 'small again')).toMatch(/^250 2\.0\.0 /);
  });
});
