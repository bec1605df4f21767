// A full disk after mail was accepted: each message reaches its destination once however long the
// disk stays full, outcomes are recorded once there is room, new mail waits (452 4.3.1) below
// queue.minFree, and an operator can purge on a full disk. The data folder is a real small tmpfs.
// Needs root to mount it; without root the suite is skipped, saying so, except under CI.
import { execFile } from 'node:child_process';
import { existsSync, rmSync } from 'node:fs';
import { mkdtemp, readdir, rm, statfs, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterEach, describe, expect, it } from 'vitest';
import { QueueStore, type NewMessage } from '../queue/queue-store.js';
import { newQueueId } from '../base/base-queue-id.js';
import { adminRequest, adminSocket, baseConfig, startApp, waitUntil, type TestApp } from './helpers/app.js';
import { RawSmtp } from './helpers/raw-smtp.js';
import { startSink, type Sink } from './helpers/sink.js';

const run = promisify(execFile);
const CAN_MOUNT = process.getuid?.() === 0 || Boolean(process.env.CI);
const TMPFS = '4m';

async function mountTmpfs(): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'ichidan-full-'));
  await run('mount', ['-t', 'tmpfs', '-o', `size=${TMPFS},mode=0700`, 'tmpfs', dir]);
  return dir;
}

async function freeBytes(dir: string): Promise<number> {
  const s = await statfs(dir);
  return s.bavail * s.bsize;
}

/** Fills the filesystem to the last block (the write stops at ENOSPC and keeps what fit). */
async function fill(file: string): Promise<void> {
  await writeFile(file, Buffer.alloc(64 * 1024 * 1024)).catch((err: NodeJS.ErrnoException) => {
    if (err.code !== 'ENOSPC') throw err;
  });
}

/** Sends one message; resolves with its queue id (rejects unless the reply is 250). */
async function send(port: number, token: string): Promise<string> {
  const c = await RawSmtp.atData(port, 'me@sender.test', [`${token}@far.test`]);
  const id = await c.finishData(`Subject: ${token}\r\nX-Token: ${token}\r\n\r\n${'body line\r\n'.repeat(150)}`);
  await c.command('QUIT');
  c.close();
  return id;
}

async function mailFrom(port: number): Promise<string> {
  const c = await RawSmtp.open(port);
  await c.reply();
  await c.command('EHLO client.test');
  const reply = await c.command('MAIL FROM:<me@sender.test> SIZE=2000');
  await c.command('QUIT');
  c.close();
  return reply;
}

const tokensAt = (sink: Sink) => sink.messages.map((m) => /X-Token: (\S+)/.exec(m.data.toString())?.[1]);

describe.skipIf(!CAN_MOUNT)(`a full disk after mail was accepted${CAN_MOUNT ? '' : ' (skipped: needs root to mount a tmpfs)'}`, () => {
  let t: TestApp | null = null;
  let sink: Sink | null = null;
  let dataDir: string | null = null;
  afterEach(async () => {
    await t?.stop();
    await sink?.close();
    if (dataDir) {
      await run('umount', [dataDir]).catch(() => undefined);
      await rm(dataDir, { recursive: true, force: true });
    }
    t = null; sink = null; dataDir = null;
  });

  it('delivers each message once over many retry cycles, records the outcomes once there is room, and refuses new mail below minFree', async () => {
    let accepting = false;
    sink = await startSink({ host: '127.0.0.2', data: () => (accepting ? undefined : { code: 451, text: '4.3.0 not yet' }) });
    dataDir = await mountTmpfs();
    const port = sink.port;
    t = await startApp((dir) => baseConfig(dir, {
      trustedNetworks: ['127.0.0.1/32'],
      queue: { retryInitial: '200ms', retryMax: '200ms', retryJitter: 0, minFree: '1MB', reserve: 0 },
      routes: { 'far.test': { host: '127.0.0.2', port } },
    }), { dataDir });
    // A transaction that reached RCPT while there was room; its DATA comes once the disk is low.
    const early = await RawSmtp.open(t.port());
    await early.reply();
    for (const line of ['EHLO client.test', 'MAIL FROM:<me@sender.test>', 'RCPT TO:<early@far.test>']) expect(await early.command(line)).toMatch(/^250/);
    const N = 20;
    const ids: string[] = [];
    for (let i = 0; i < N; i++) ids.push(await send(t.port(), `m${i}`));
    const store = t.app.queue.store;
    await waitUntil(() => ids.every((id) => store.recipientsOf(id)[0]?.attempts >= 1), 20_000, 'a first, deferred attempt of each');

    // The WAL emptied first (as in the purge below): the outcomes' commits then need new blocks.
    store.db.pragma('wal_checkpoint(TRUNCATE)');
    const filler = join(dataDir, 'filler');
    await fill(filler);
    expect(await freeBytes(dataDir)).toBeLessThan(64 * 1024);
    accepting = true;
    await sink.waitFor(N, 20_000);
    // About fifteen retry cycles of 200 ms with the disk still full.
    await new Promise((r) => setTimeout(r, 3000));
    expect(tokensAt(sink).sort()).toEqual(ids.map((_, i) => `m${i}`).sort());
    expect(t.logs.some((l) => l.msg === 'could not record delivery outcomes; kept in memory and retried without contacting the destination again')).toBe(true);
    expect(ids.some((id) => store.recipientsOf(id)[0]?.state === 'queued')).toBe(true);
    expect(await t.app.metrics.metrics()).toMatch(/^ichidan_queue_outcomes_uncommitted [1-9]/m);
    expect(await mailFrom(t.port())).toMatch(/^452 4\.3\.1 /);

    // Some room again, still below minFree: outcomes are recorded, new mail still waits.
    await rm(filler);
    await writeFile(filler, Buffer.alloc(Math.max(0, (await freeBytes(dataDir)) - 400 * 1024)));
    await waitUntil(() => ids.every((id) => store.message(id) === undefined), 20_000, 'the delivered messages to be recorded and swept');
    expect(t.logs.some((l) => l.msg === 'delivery outcomes recorded after a failed commit')).toBe(true);
    await new Promise((r) => setTimeout(r, 1200));
    expect(await mailFrom(t.port())).toMatch(/^452 4\.3\.1 /);
    // There would be room for it, but below minFree the DATA of a transaction begun earlier waits too.
    expect(await early.command('DATA')).toMatch(/^354/);
    early.send('Subject: early\r\n\r\nsmall\r\n.\r\n');
    expect((await early.reply()).join('\n')).toMatch(/^452 4\.3\.1 /);
    early.close();
    expect(sink.messages).toHaveLength(N);

    await rm(filler);
    await new Promise((r) => setTimeout(r, 1200));
    expect(await mailFrom(t.port())).toMatch(/^250 /);
    await send(t.port(), 'after');
    await sink.waitFor(N + 1, 10_000);
    expect(sink.messages).toHaveLength(N + 1);
  }, 90_000);

  it('purges on a full disk, with the space reserve, and makes the reserve again once there is room', async () => {
    dataDir = await mountTmpfs();
    t = await startApp((dir) => baseConfig(dir, {
      trustedNetworks: ['127.0.0.1/32'],
      queue: { minFree: '512KB', reserve: '256KB' },
      routes: { 'far.test': { hold: true } },
    }), { dataDir });
    const reserve = join(dataDir, 'reserve');
    expect(existsSync(reserve)).toBe(true);
    const ids: string[] = [];
    for (let i = 0; i < 10; i++) ids.push(await send(t.port(), `p${i}`));
    await waitUntil(() => ids.every((id) => t!.app.queue.store.recipientsOf(id)[0]?.state === 'held'), 10_000, 'the messages to be held');

    // The WAL emptied first: the purge's commit then needs new blocks (a WAL already grown takes
    // commits in place once checkpointed, and the full disk would not be felt).
    t.app.queue.store.db.pragma('wal_checkpoint(TRUNCATE)');
    const filler = join(dataDir, 'filler');
    await fill(filler);
    const res = await adminRequest(adminSocket(t.app.config), 'POST', '/v1/queue/purge', { tenant: '_relay' });
    expect(res).toEqual({ status: 200, body: { purged: 10 } });
    expect(existsSync(reserve)).toBe(false);
    await waitUntil(async () => ids.every((id) => t!.app.queue.store.message(id) === undefined)
      && (await readdir(join(dataDir!, 'spool'))).every((f) => !ids.includes(f)), 10_000, 'the purged messages to be swept');

    // Room above minFree again, but not yet for the reserve: what the release gave back is not for
    // new mail, which waits (452) until the reserve is made again.
    await rm(filler);
    await writeFile(filler, Buffer.alloc(Math.max(0, (await freeBytes(dataDir)) - 640 * 1024)));
    await new Promise((r) => setTimeout(r, 1200));
    expect(await freeBytes(dataDir)).toBeGreaterThan(512 * 1024);
    expect(t.app.queue.space.reserveHeld).toBe(false);
    expect(await mailFrom(t.port())).toMatch(/^452 4\.3\.1 /);
    await expect(send(t.port(), 'while-released')).rejects.toThrow(/452 4\.3\.1/);

    await rm(filler);
    await waitUntil(() => existsSync(reserve) && t!.app.queue.space.reserveHeld, 5000, 'the reserve to be made again');
    expect(await mailFrom(t.port())).toMatch(/^250 /);
    await send(t.port(), 'after');
  }, 60_000);

  it('keeps concurrent transfers from writing past minFree together', async () => {
    dataDir = await mountTmpfs();
    t = await startApp((dir) => baseConfig(dir, {
      trustedNetworks: ['127.0.0.1/32'],
      queue: { minFree: '1MB', reserve: '128KB' },
      routes: { 'far.test': { hold: true } },
    }), { dataDir });
    // 700 KB above the threshold, looked at before the transfers start.
    const filler = join(dataDir, 'filler');
    await writeFile(filler, Buffer.alloc((await freeBytes(dataDir)) - 1024 * 1024 - 700 * 1024));
    await new Promise((r) => setTimeout(r, 1200));
    expect(await mailFrom(t.port())).toMatch(/^250 /);
    // Five transfers of 300 KB at once: each alone fits, together they do not.
    const clients = await Promise.all(Array.from({ length: 5 }, (_, i) => RawSmtp.atData(t!.port(), 'me@sender.test', [`c${i}@far.test`])));
    const body = 'x'.repeat(998) + '\r\n';
    const replies = await Promise.all(clients.map(async (c, i) => {
      c.send(`Subject: c${i}\r\n\r\n${body.repeat(300)}.\r\n`);
      const reply = (await c.reply()).join('\n');
      c.close();
      return reply;
    }));
    const accepted = replies.filter((r) => /^250 /.test(r)).length;
    expect(replies.filter((r) => /^452 4\.3\.1 /.test(r))).toHaveLength(5 - accepted);
    // At most what fits in the 700 KB; interleaved, they may all run out of it before one ends.
    expect(accepted).toBeLessThanOrEqual(2);
    // What is left is above the threshold, less the queue records' own pages.
    expect(await freeBytes(dataDir)).toBeGreaterThan(1024 * 1024 - 64 * 1024);
  }, 60_000);

  it('tries every outcome and removal of a failed batch again once the reserve is released', async () => {
    dataDir = await mountTmpfs();
    const store = new QueueStore(join(dataDir, 'queue.db'), false);
    try {
      const message = (id: string): NewMessage => ({
        id, size: 10, sender: 's@x.test', receivedAt: Date.now(), trace: '', ret: null, envid: null, smtputf8: false, body8bit: false,
        client: '127.0.0.1', helo: 'x', authUser: null, listener: 'mx', kind: 'mail',
        recipients: [{ tenant: 't', address: 'r@far.test', domain: 'far.test', orcpt: null, notify: null }],
      });
      const [a, b] = [newQueueId(), newQueueId()];
      for (const id of [a, b]) await store.write([{ op: 'insertMessage', message: message(id) }]);
      // The log emptied, so any further commit needs new blocks; then the disk is filled to the last one.
      store.db.pragma('wal_checkpoint(TRUNCATE)');
      const reserve = join(dataDir, 'reserve');
      await writeFile(reserve, Buffer.alloc(256 * 1024, 1));
      await fill(join(dataDir, 'filler'));
      let releases = 0;
      store.onFull = () => {
        if (existsSync(reserve)) { rmSync(reserve); releases++; return true; }
        return false;
      };
      // A unit in flight, so that the next two go together in one batch.
      const first = store.write([{ op: 'pruneScans', before: 0 }]).catch(() => undefined);
      const purge = store.write([{ op: 'purgeRecipients', select: { messageId: a }, now: Date.now(), reason: 'test' }], { essential: true });
      const remove = store.write([{ op: 'deleteMessage', id: b }], { essential: true });
      await first;
      const settled = await Promise.allSettled([purge, remove]);
      expect(settled.map((r) => r.status)).toEqual(['fulfilled', 'fulfilled']);
      expect(await purge).toEqual([1]);
      expect(releases).toBe(1);
      expect(store.message(b)).toBeUndefined();
      expect(store.recipientsOf(a)[0].state).not.toBe('queued');
    } finally {
      await store.close();
    }
  }, 30_000);
});
