// A full disk while writing a bounce: the spool is a real 256 KB tmpfs filled up after the message
// was refused for good; the bounce stays owed, is sent once there is room, and the destination that
// refused the recipient is not asked again.
import { execFile } from 'node:child_process';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { baseConfig, parseConfig, startApp, waitUntil } from './helpers/app.js';
import { RawSmtp } from './helpers/raw-smtp.js';
import { startSink } from './helpers/sink.js';

const run = promisify(execFile);

describe('a full disk while writing a bounce', () => {
  it('keeps the bounce owed, then sends it once there is room again, without asking the destination twice', async () => {
    const refusing = await startSink({ host: '127.0.0.3', rcpt: () => ({ code: 550, text: '5.1.1 no such user' }) });
    const senderBox = await startSink({ host: '127.0.0.2' });
    const dataDir = await mkdtemp(join(tmpdir(), 'ichidan-enospc-dsn-'));
    await mkdir(join(dataDir, 'spool'), { recursive: true });
    await run('mount', ['-t', 'tmpfs', '-o', 'size=256k', 'tmpfs', join(dataDir, 'spool')]);
    const build = (dir: string, held: boolean) => baseConfig(dir, {
      trustedNetworks: ['127.0.0.1/32'],
      // No free-space threshold: the disk is filled past it on purpose, to make the notice fail.
      queue: { retryInitial: '200ms', retryMax: '200ms', retryJitter: 0, minFree: 0 },
      routes: {
        'sender.test': { host: '127.0.0.2', port: senderBox.port },
        'remote.test': held ? { hold: true } : { host: '127.0.0.3', port: refusing.port },
      },
    });
    const t = await startApp((dir) => build(dir, true), { dataDir });
    try {
      const c = await RawSmtp.atData(t.port(), 'me@sender.test', ['gone@remote.test']);
      const qid = await c.finishData(`Subject: doomed\r\n\r\n${'body line\r\n'.repeat(2000)}`); // ~20 KB, returned whole in the bounce
      await c.command('QUIT');
      await waitUntil(() => t.logs.some((l) => l.qid === qid && l.msg === 'held'));
      // Fill what is left of the filesystem.
      const filler = join(dataDir, 'spool', 'corrupt', 'filler');
      await writeFile(filler, Buffer.alloc(512 * 1024)).catch(() => undefined);
      t.app.reconfigure(parseConfig(build(dataDir, false), 'test'));
      expect(await t.app.queue.release(null, 'remote.test')).toBe(1);
      await waitUntil(() => t.logs.some((l) => l.msg === 'could not write a delivery status notice; retrying later'), 10_000, 'the failed notice');
      expect(t.app.queue.store.recipientsOf(qid)[0].state).toBe('queued');
      expect(senderBox.messages).toHaveLength(0);
      await rm(filler);
      const [dsn] = await senderBox.waitFor(1, 10_000);
      expect(dsn.data.toString()).toMatch(/Final-Recipient: rfc822; gone@remote\.test\r\nAction: failed\r\nStatus: 5\.1\.1/);
      // Only the notice was retried: the destination that refused the recipient was asked once.
      expect(refusing.rcptAttempts.get('gone@remote.test')).toBe(1);
      await waitUntil(() => t.app.queue.store.message(qid) === undefined, 10_000, 'the message to be swept');
    } finally {
      await t.stop();
      await run('umount', [join(dataDir, 'spool')]).catch(() => undefined);
      await rm(dataDir, { recursive: true, force: true });
      await refusing.close();
      await senderBox.close();
    }
  });
});
