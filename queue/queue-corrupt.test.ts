import { mkdtemp, rm, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { classify, readCorrupt, requeueProblem, type Sides } from './queue-corrupt.js';
import { newQueueId } from './queue-id.js';
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
  ])('%s', (_name, sides, want) => {
    expect(classify(sides)).toEqual(want);
  });

  it.each<[string, 'unacknowledged' | 'damaged', Sides, RegExp | null]>([
    ['unacknowledged, whatever its file', 'unacknowledged', { recordSize: 10, fileSize: 10 }, /^never acknowledged/],
    ['damaged, file still missing', 'damaged', { recordSize: 10, fileSize: null }, /still missing/],
    ['damaged, file still the wrong size', 'damaged', { recordSize: 10, fileSize: 4 }, /4 bytes and the record says 10/],
    ['damaged, file of the recorded size back', 'damaged', { recordSize: 10, fileSize: 10 }, null],
  ])('requeue: %s', (_name, kind, sides, want) => {
    const problem = requeueProblem(kind, sides);
    if (want === null) expect(problem).toBeNull();
    else expect(problem).toMatch(want);
  });
});

describe('reconciliation records the kind of each entry', () => {
  it('sets aside files without records as unacknowledged and records without a matching file as damaged', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'ichidan-corrupt-'));
    const spool = new Spool(join(dir, 'spool'), false);
    await spool.init();
    const store = new QueueStore(join(dir, 'queue.db'), false);
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
});
