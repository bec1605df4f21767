import { mkdtemp, rm, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { classify, readCorrupt, requeueProblem, type Sides } from './queue-corrupt.js';
import { newQueueId } from '../base/base-queue-id.js';
import { reconcile } from './queue-reconcile.js';
import { Spool } from './queue-spool.js';
import { QueueStore, type NewMessage } from './queue-store.js';

describe('corrupt entry kinds', () => {
  it.each<[string, Sides, ReturnType<typeof classify>]>([
    ['record and file agree', { recordSize: 10, fileSize: 10 }, null],
    ['neither exists', { recordSize: null, fileSize: null }, null],
    ['a file without a record (complete or truncated: no 250 either way)', { recordSize: null, fileSize: 7 },
      { kind: 'unacknowledged', reason: 'spool file without a queue record: never acknowledged (no 250 was sent)' }],
    ['an empty file without a record', { recordSize: null, fileSize: 0 }, { kind: 'unacknowledged', reason: expect.any(String) as string }],
    ['a record without its file', { recordSize: 10, fileSize: null }, { kind: 'damaged', reason: 'spool file missing' }],
    ['a truncated file', { recordSize: 10, fileSize: 4 }, { kind: 'damaged', reason: 'spool file is 4 bytes, the record says 10' }],
    ['a file longer than recorded', { recordSize: 10, fileSize: 12 }, { kind: 'damaged', reason: 'spool file is 12 bytes, the record says 10' }],
    ['a file without a record in a new database (records lost, kept for an operator)', { recordSize: null, fileSize: 7, newDatabase: true },
      { kind: 'damaged', reason: expect.stringMatching(/queue database is new: its record was lost/) as unknown as string }],
  ])('%s', (_name, sides, want) => {
    expect(classify(sides)).toEqual(want);
  });

  it.each<[string, 'unacknowledged' | 'damaged', Sides, number, RegExp | null]>([
    ['unacknowledged, whatever its file', 'unacknowledged', { recordSize: 10, fileSize: 10 }, 0, /^never acknowledged/],
    ['damaged, file still missing', 'damaged', { recordSize: 10, fileSize: null }, 1, /still missing/],
    ['damaged, file still the wrong size', 'damaged', { recordSize: 10, fileSize: 4 }, 1, /4 bytes and the record says 10/],
    ['damaged, record lost with its recipients', 'damaged', { recordSize: 10, fileSize: 10 }, 0, /no recipient is left/],
    ['damaged, file of the recorded size back', 'damaged', { recordSize: 10, fileSize: 10 }, 1, null],
  ])('requeue: %s', (_name, kind, sides, recipients, want) => {
    const problem = requeueProblem(kind, sides, recipients);
    if (want === null) expect(problem).toBeNull();
    else expect(problem).toMatch(want);
  });
});

/**
 * A spool and a queue database from an earlier start (not a new database: a file without a record
 * is then a leftover, not a lost record).
 */
async function earlierQueue(): Promise<{ dir: string; spool: Spool; store: QueueStore }> {
  const dir = await mkdtemp(join(tmpdir(), 'ichidan-corrupt-'));
  const spool = new Spool(join(dir, 'spool'), false);
  await spool.init();
  await new QueueStore(join(dir, 'queue.db'), false).close();
  return { dir, spool, store: new QueueStore(join(dir, 'queue.db'), false) };
}

describe('reconciliation records the kind of each entry', () => {
  it('sets aside files without records as unacknowledged and records without a matching file as damaged', async () => {
    const { dir, spool, store } = await earlierQueue();
    try {
      const message = (id: string, size: number): NewMessage => ({
        id, size, sender: 's@x.test', receivedAt: Date.now(), trace: '', ret: null, envid: null, smtputf8: false, body8bit: false,
        client: '127.0.0.1', helo: 'x', authUser: null, listener: 'mx', kind: 'mail',
        recipients: [{ tenant: 't', address: 'r@y.test', domain: 'y.test', orcpt: null, notify: null }],
      });
      const [good, missing, short, orphan, partial] = Array.from({ length: 5 }, () => newQueueId());
      for (const id of [good, missing, short]) await store.write([{ op: 'insertMessage', message: message(id, 10) }]);
      await writeFile(spool.path(good), '0123456789');
      await writeFile(spool.path(short), '0123456789');
      await truncate(spool.path(short), 3);
      await writeFile(spool.path(orphan), 'Subject: x\r\n\r\nwhole\r\n');
      await writeFile(spool.path(partial), 'Subject: y\r\n');

      const report = await reconcile(spool, store);
      expect(report.active).toBe(1);
      const kinds = Object.fromEntries(readCorrupt(store.db).map((e) => [e.id, [e.kind, e.recipients]]));
      expect(kinds).toEqual({
        [missing]: ['damaged', 1], [short]: ['damaged', 1], [orphan]: ['unacknowledged', 0], [partial]: ['unacknowledged', 0],
      });
      expect(await spool.asideSize(short)).toBe(3);
      expect(await spool.asideSize(orphan)).toBeGreaterThan(0);
      expect(await spool.list()).toEqual([good]);
    } finally {
      await store.close();
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('comes up on a full disk: its records may use the reserve, and what finds no room stays for the next start', async () => {
    const { dir, spool, store } = await earlierQueue();
    try {
      const leftover = newQueueId();
      await writeFile(spool.path(leftover), 'Subject: partial\r\n');
      const asked: Array<boolean | undefined> = [];
      const write = store.write.bind(store);
      store.write = (unit, opts = {}) => {
        asked.push(opts.essential);
        if (unit.some((op) => op.op === 'insertCorrupt')) return Promise.reject(Object.assign(new Error('database or disk is full'), { code: 'SQLITE_FULL' }));
        return write(unit, opts);
      };
      const report = await reconcile(spool, store);
      expect(report.deferred).toBe(1);
      expect(asked).toEqual([true]);
      expect(await spool.list()).toEqual([leftover]);
    } finally {
      await store.close();
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('keeps a file without a record as damaged when the queue database is new (its records were lost)', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'ichidan-corrupt-'));
    const spool = new Spool(join(dir, 'spool'), false);
    await spool.init();
    const lost = newQueueId();
    await writeFile(spool.path(lost), 'Subject: acknowledged once\r\n\r\nbody\r\n');
    let store = new QueueStore(join(dir, 'queue.db'), false);
    try {
      expect(store.newDatabase).toBe(true);
      await reconcile(spool, store);
      await store.close();
      // The same database at the next start: a new leftover is an ordinary unacknowledged one.
      const leftover = newQueueId();
      await writeFile(spool.path(leftover), 'Subject: partial\r\n');
      store = new QueueStore(join(dir, 'queue.db'), false);
      expect(store.newDatabase).toBe(false);
      await reconcile(spool, store);
      expect(Object.fromEntries(readCorrupt(store.db).map((e) => [e.id, e.kind]))).toEqual({ [lost]: 'damaged', [leftover]: 'unacknowledged' });
    } finally {
      await store.close();
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('adopts a file set aside without its record, and finishes a move a stop interrupted', async () => {
    const earlier = await earlierQueue();
    const { dir, spool } = earlier;
    let store = earlier.store;
    try {
      // Moved to corrupt/ by a start that was killed before it committed the record.
      const stray = newQueueId();
      await writeFile(spool.asidePath(stray), 'Subject: stray\r\n');
      // Recorded by a start that was killed before it moved the file.
      const unmoved = newQueueId();
      await writeFile(spool.path(unmoved), 'Subject: unmoved\r\n');
      await store.write([{ op: 'insertCorrupt', id: unmoved, kind: 'unacknowledged', size: 18, receivedAt: Date.now(), note: 'x', at: Date.now() }]);

      const report = await reconcile(spool, store);
      expect(report.corrupt).toEqual([{ id: stray, kind: 'unacknowledged', reason: expect.stringMatching(/never acknowledged/) as unknown as string }]);
      expect(Object.fromEntries(readCorrupt(store.db).map((e) => [e.id, [e.kind, e.size]]))).toEqual({ [stray]: ['unacknowledged', 16], [unmoved]: ['unacknowledged', 18] });
      expect(await spool.list()).toEqual([]);
      expect(await spool.asideSize(unmoved)).toBe(18);

      // Nothing changes at the next start: each is listed once.
      await store.close();
      store = new QueueStore(join(dir, 'queue.db'), false);
      expect((await reconcile(spool, store)).corrupt).toEqual([]);
      expect(readCorrupt(store.db).map((e) => e.id).sort()).toEqual([stray, unmoved].sort());
    } finally {
      await store.close();
      await rm(dir, { recursive: true, force: true });
    }
  });
});
