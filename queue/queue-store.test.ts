// The queue database's batching against the space reserve (while the reserve is released, new
// mail's records are refused however long ago they were queued, and everything else goes on),
// commits without a sync, and the sync points that make them durable.
import { statSync } from 'node:fs';
import { copyFile, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { describe, expect, it } from 'vitest';
import { newQueueId } from '../base/base-queue-id.js';
import { QueueStore, type NewMessage } from './queue-store.js';

const message = (id: string, kind: NewMessage['kind'] = 'mail'): NewMessage => ({
  id, size: 10, sender: 's@x.test', receivedAt: Date.now(), trace: '', ret: null, envid: null, smtputf8: false, body8bit: false,
  client: '127.0.0.1', helo: 'x', authUser: null, listener: 'mx', kind,
  recipients: [{ tenant: 't', address: 'r@y.test', domain: 'y.test', orcpt: null, notify: null }],
});

/** A store (queue.fsync as given) in a folder of its own, closed and removed after `body`. */
async function withStore(fsync: boolean, body: (store: QueueStore, dir: string) => Promise<void>): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'ichidan-store-'));
  const store = new QueueStore(join(dir, 'queue.db'), fsync);
  try {
    await body(store, dir);
  } finally {
    await store.close();
    await rm(dir, { recursive: true, force: true });
  }
}

describe('new mail while the space reserve is released', () => {
  it('is refused with ENOSPC, also when queued before the release; outcomes, notices and the rest go on', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'ichidan-store-'));
    const store = new QueueStore(join(dir, 'queue.db'), false);
    try {
      const old = newQueueId();
      await store.write([{ op: 'insertMessage', message: message(old) }]);
      let released = false;
      store.refuseNewMail = () => released;

      // Queued behind a batch in flight, then the reserve goes before its own batch is formed.
      const inFlight = store.write([{ op: 'pruneScans', before: 0 }]);
      const early = store.write([{ op: 'insertMessage', message: message(newQueueId()) }]);
      released = true;
      await inFlight;
      await expect(early).rejects.toMatchObject({ code: 'ENOSPC' });
      await expect(store.write([{ op: 'insertMessage', message: message(newQueueId()) }])).rejects.toMatchObject({ code: 'ENOSPC' });

      // An outcome with its notice, a removal and housekeeping are not new mail.
      const [recipient] = store.recipientsOf(old);
      const notice = newQueueId();
      await store.write([
        { op: 'updateRecipients', messageId: old, updates: [{ id: recipient.id, state: 'bounced', nextAttempt: Date.now(), code: 550, status: '5.1.1', reply: 'no', host: 'y.test', attempted: true }], now: Date.now() },
        { op: 'insertMessage', message: message(notice, 'dsn') },
      ], { essential: true });
      expect(store.message(notice)).toBeDefined();
      await store.write([{ op: 'pruneScans', before: 0 }]);
      await store.write([{ op: 'deleteMessage', id: notice }], { essential: true });

      released = false;
      const after = newQueueId();
      await store.write([{ op: 'insertMessage', message: message(after) }]);
      expect(store.message(after)).toBeDefined();
    } finally {
      await store.close();
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe('commits that need no sync', () => {
  it('go as soon as the previous commit is done, with no fixed window between them', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'ichidan-store-'));
    const store = new QueueStore(join(dir, 'queue.db'), true);
    try {
      await store.write([{ op: 'pruneScans', before: 0 }]);
      // One after the other, each waited on (as a 250 waits on its record): a window of 10 ms
      // between batches would take at least 2,000 ms for these 200; without one they take a few
      // hundred even on a loaded machine.
      const started = performance.now();
      for (let i = 0; i < 200; i++) await store.write([{ op: 'insertMessage', message: message(newQueueId()) }], { durable: false });
      expect(performance.now() - started).toBeLessThan(1500);
      // Concurrent ones still share commits.
      await Promise.all(Array.from({ length: 20 }, () => store.write([{ op: 'insertMessage', message: message(newQueueId()) }], { durable: false })));
      expect(store.allMessages()).toHaveLength(220);
    } finally {
      await store.close();
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe('lazy units', () => {
  it('wait a moment for company, and go at once with a unit that is not lazy', () => withStore(true, async (store, dir) => {
    await store.write([{ op: 'pruneScans', before: 0 }], { durable: false });
    let started = performance.now();
    await store.write([{ op: 'pruneScans', before: 0 }], { durable: false, lazy: true });
    expect(performance.now() - started).toBeGreaterThanOrEqual(40);
    // Taken along by a unit a reply waits on: both done well before the lazy one's wait would end.
    started = performance.now();
    let lazyDone = 0;
    const lazy = store.write([{ op: 'pruneScans', before: 0 }], { durable: false, lazy: true }).then(() => { lazyDone = performance.now() - started; });
    await new Promise((r) => setTimeout(r, 5));
    await store.write([{ op: 'insertMessage', message: message(newQueueId()) }], { durable: false });
    await lazy;
    expect(lazyDone).toBeLessThan(40);
  }));
});

describe('sync points', () => {
  /** The messages a copy of the database file alone holds (without its WAL: what a sync point put there). */
  const inFileAlone = async (dir: string): Promise<number> => {
    const copy = join(dir, 'copy.db');
    await copyFile(join(dir, 'queue.db'), copy);
    const db = new Database(copy, { readonly: true });
    try {
      // The schema itself may still be in the WAL only.
      if (!db.prepare(`SELECT 1 FROM sqlite_master WHERE name = 'messages'`).get()) return 0;
      return (db.prepare('SELECT COUNT(*) AS n FROM messages').get() as { n: number }).n;
    } finally {
      db.close();
      await rm(copy, { force: true });
    }
  };

  it('put every earlier unsynced commit into the database file; a clean close empties the WAL', () => withStore(true, async (store, dir) => {
    // Enough for several hundred WAL pages: no checkpoint copies any of them into the file meanwhile
    // (an unsynced one could leave it half old, half new after a power cut).
    await Promise.all(Array.from({ length: 5 }, async (_, n) => {
      for (let i = 0; i < 100; i++) await store.write([{ op: 'insertMessage', message: message(newQueueId()) }], { durable: false });
    }));
    expect(store.syncPoints).toBe(0);
    expect(await inFileAlone(dir)).toBe(0);
    expect(statSync(join(dir, 'queue.db-wal')).size).toBeGreaterThan(0);

    await store.write([{ op: 'journalSettled', at: Date.now() }], { essential: true });
    expect(store.syncPoints).toBe(1);
    expect(await inFileAlone(dir)).toBe(500);
    expect(statSync(join(dir, 'queue.db-wal')).size).toBe(0);

    await store.write([{ op: 'insertMessage', message: message(newQueueId()) }], { durable: false });
    expect(await store.close()).toBe(true);
    expect(statSync(join(dir, 'queue.db-wal'), { throwIfNoEntry: false })?.size ?? 0).toBe(0);
    expect(await inFileAlone(dir)).toBe(501);
  }));

  it('are made on the way once the WAL passes its bound, with no durable unit', () => withStore(true, async (store, dir) => {
    const big = (id: string): NewMessage => ({ ...message(id), trace: 'x'.repeat(8000) });
    for (let i = 0; i < 1000 && store.syncPoints === 0; i++) await store.write([{ op: 'insertMessage', message: big(newQueueId()) }], { durable: false });
    expect(store.syncPoints).toBe(1);
    expect(await inFileAlone(dir)).toBeGreaterThan(100);
    expect(statSync(join(dir, 'queue.db-wal')).size).toBeLessThan(4 * 1024 * 1024);
  }));

  it('are not made with queue.fsync off, and its close does not claim to have synced', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'ichidan-store-'));
    const store = new QueueStore(join(dir, 'queue.db'), false);
    try {
      await store.write([{ op: 'journalSettled', at: Date.now() }], { essential: true });
      expect(store.syncPoints).toBe(0);
      expect(await store.close()).toBe(false);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('fail the durable units of their batch when the checkpoint cannot finish, and count none', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'ichidan-store-'));
    const store = new QueueStore(join(dir, 'queue.db'), true);
    const reader = new Database(join(dir, 'queue.db'));
    try {
      await store.write([{ op: 'insertMessage', message: message(newQueueId()) }], { durable: false });
      // A reader holding an old snapshot keeps a full checkpoint from finishing (after the busy timeout).
      reader.pragma('busy_timeout = 0');
      const read = reader.prepare('SELECT id FROM messages');
      const it = read.iterate();
      it.next();
      await store.write([{ op: 'insertMessage', message: message(newQueueId()) }], { durable: false });
      await expect(store.write([{ op: 'journalSettled', at: Date.now() }], { essential: true })).rejects.toMatchObject({ code: 'SQLITE_BUSY' });
      expect(store.syncPoints).toBe(0);
      it.return?.();
      await store.write([{ op: 'journalSettled', at: Date.now() }], { essential: true });
      expect(store.syncPoints).toBe(1);
    } finally {
      reader.close();
      await store.close();
      await rm(dir, { recursive: true, force: true });
    }
  }, 60_000);
});
