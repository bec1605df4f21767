// Storage failures during DATA (a full disk, a failing database) and startup reconciliation.
import { execFile } from 'node:child_process';
import { mkdir, mkdtemp, readdir, rm, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import Database from 'better-sqlite3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { baseConfig, startApp, type TestApp } from './helpers/app.js';
import { startChild } from './helpers/child.js';
import { RawSmtp } from './helpers/raw-smtp.js';

const run = promisify(execFile);

async function sendOne(port: number, body: string): Promise<string> {
  const c = await RawSmtp.open(port);
  await c.reply();
  await c.command('EHLO client.test');
  await c.command('MAIL FROM:<x@remote.test>');
  await c.command('RCPT TO:<ann@alpha.test>');
  await c.command('DATA');
  c.send(`Subject: storage\r\n\r\n${body}\r\n.\r\n`);
  const reply = (await c.reply()).join('\n');
  await c.command('QUIT');
  c.close();
  return reply;
}

const spoolFiles = async (dir: string) => (await readdir(join(dir, 'spool'), { withFileTypes: true })).filter((e) => e.isFile()).map((e) => e.name);

const config = (dir: string) => baseConfig(dir, { tenants: { alpha: { domains: ['alpha.test'] } }, routes: { 'alpha.test': { hold: true } } });

describe('a full disk during DATA', () => {
  let t: TestApp;
  let dataDir: string;
  beforeAll(async () => {
    dataDir = await mkdtemp(join(tmpdir(), 'ichidan-enospc-'));
    await mkdir(join(dataDir, 'spool'), { recursive: true });
    // A real filesystem that really fills up: a 512 KB tmpfs under the spool.
    await run('mount', ['-t', 'tmpfs', '-o', 'size=512k', 'tmpfs', join(dataDir, 'spool')]);
    // No free-space threshold: this is about the disk filling up during DATA, past any threshold.
    t = await startApp((dir) => ({ ...config(dir), queue: { ...config(dir).queue, minFree: 0 } }), { dataDir });
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

describe('a failing queue database during DATA', () => {
  it('answers 452 4.3.1 and removes the spool file it had written', async () => {
    const t = await startApp(config);
    try {
      // A real SQLite failure: a trigger that makes every insert fail.
      t.app.queue.store.db.exec(`CREATE TRIGGER fail_insert BEFORE INSERT ON messages BEGIN SELECT RAISE(FAIL, 'injected failure'); END`);
      expect(await sendOne(t.port(), 'lost?')).toMatch(/^452 4\.3\.1 /);
      expect(await spoolFiles(t.dataDir)).toEqual([]);
      t.app.queue.store.db.exec('DROP TRIGGER fail_insert');
      expect(await sendOne(t.port(), 'kept')).toMatch(/^250 2\.0\.0 /);
      expect(await spoolFiles(t.dataDir)).toHaveLength(1);
    } finally {
      await t.stop();
    }
  });
});

describe('startup reconciliation', () => {
  it('sets aside a record without a file, a file without a record and a truncated file, and reports them', async () => {
    const dataDir = await mkdtemp(join(tmpdir(), 'ichidan-reconcile-'));
    try {
      let t = await startApp(config, { dataDir });
      const ids: string[] = [];
      for (const body of ['one', 'two', 'three']) ids.push((await sendOne(t.port(), body)).split(' ').pop()!);
      await t.stop();

      await rm(join(dataDir, 'spool', ids[0]));
      await truncate(join(dataDir, 'spool', ids[1]), 5);
      const orphan = '1M00000000000000';
      await writeFile(join(dataDir, 'spool', orphan), 'Subject: orphan\r\n\r\nno record\r\n');

      t = await startApp(config, { dataDir });
      const warnings = t.logs.filter((l) => l.msg === 'queue entry set aside as corrupt').map((l) => [l.qid, l.reason]);
      expect(warnings).toEqual(expect.arrayContaining([
        [ids[0], 'spool file missing'],
        [ids[1], expect.stringMatching(/^spool file is 5 bytes/)],
        [orphan, expect.stringMatching(/without a queue record/)],
      ]));
      expect(warnings).toHaveLength(3);
      expect((await readdir(join(dataDir, 'spool', 'corrupt'))).sort()).toEqual([ids[1], orphan].sort());
      expect(await spoolFiles(dataDir)).toEqual([ids[2]]);
      await t.stop();

      // The CLI reports them too.
      const cli = await run('node', ['dist/mta/mta-main.js', 'queue', '-c', await writeConfig(dataDir)]);
      expect(cli.stdout).toContain(`corrupt\t${ids[0]}\tspool file missing`);
      expect(cli.stdout).toContain(`corrupt\t${orphan}\t`);
      expect(cli.stdout).toMatch(/alpha\tqueued\t1|alpha\theld\t1/);
      const db = new Database(join(dataDir, 'queue.db'), { readonly: true });
      expect(db.prepare(`SELECT COUNT(*) AS n FROM messages WHERE state = 'corrupt'`).get()).toEqual({ n: 3 });
      db.close();
    } finally {
      await rm(dataDir, { recursive: true, force: true });
    }
  });
});

async function writeConfig(dataDir: string): Promise<string> {
  const file = join(dataDir, 'config.yaml');
  await writeFile(file, `dataDir: ${dataDir}\nlisteners: [{ name: mx, role: mx, port: 0 }]\ntenants: { alpha: { domains: [alpha.test] } }\n`);
  return file;
}

describe('startup of the real process with entries to set aside', () => {
  it('finishes reconciling, becomes ready, and stops cleanly', async () => {
    const dataDir = await mkdtemp(join(tmpdir(), 'ichidan-start-'));
    try {
      await mkdir(join(dataDir, 'spool'), { recursive: true });
      const orphan = '1M00000000000001';
      await writeFile(join(dataDir, 'spool', orphan), 'Subject: orphan\r\n\r\nno record\r\n');
      const child = await startChild(await writeConfig(dataDir));
      expect(child.ports.mx).toBeGreaterThan(0);
      child.proc.kill('SIGTERM');
      expect(await child.exited).toBe(0);
      const cli = await run('node', ['dist/mta/mta-main.js', 'queue', '-c', join(dataDir, 'config.yaml')]);
      expect(cli.stdout).toContain(`corrupt\t${orphan}\t`);
    } finally {
      await rm(dataDir, { recursive: true, force: true });
    }
  });
});

describe('a full disk while writing a bounce', () => {
  it('keeps the bounce owed, then sends it once there is room again, without asking the destination twice', async () => {
    const { startSink } = await import('./helpers/sink.js');
    const { parseConfig } = await import('../mta/index.js');
    const { waitUntil } = await import('./helpers/app.js');
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
