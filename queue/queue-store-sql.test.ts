import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { TranscriptChunk } from '../delivery/index.js';
import type { ScanRecord } from '../engines/engines-records.js';
import { readScan } from './queue-records-sql.js';
import { readConnections } from './queue-records-transcripts.js';
import {
  configure, createReader, createWriter, migrate, openDomains, queueStatus, readQuarantine, SCHEMA,
  type NewMessage, type QueueReader, type RecipientUpdate, type WriteOp,
} from './queue-store-sql.js';

const T0 = 1_800_000_000_000;

let dir: string;
let db: Database.Database;
let write: (op: WriteOp) => unknown;
let read: QueueReader;

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'ichidan-sql-'));
  db = new Database(join(dir, 'queue.db'));
  configure(db, false);
  db.exec(SCHEMA);
  migrate(db);
  write = createWriter(db);
  read = createReader(db);
});

afterEach(() => {
  db.close();
  rmSync(dir, { recursive: true, force: true });
});

function message(id: string, over: Partial<NewMessage> = {}): NewMessage {
  return {
    id, size: 123, sender: 'alice@src.test', receivedAt: T0, trace: 'Received: x\r\n', ret: null, envid: null, smtputf8: false, body8bit: false,
    client: '192.0.2.1', helo: 'client.test', authUser: null, listener: 'mx', kind: 'mail',
    recipients: [
      { tenant: 'a', address: 'r0@one.test', domain: 'one.test', orcpt: null, notify: null },
      { tenant: 'b', address: 'r1@two.test', domain: 'two.test', orcpt: 'rfc822;r1@two.test', notify: 'FAILURE' },
    ],
    ...over,
  };
}

const update = (id: number, over: Partial<RecipientUpdate>): RecipientUpdate => ({
  id, state: 'queued', nextAttempt: T0 + 1000, code: 451, status: '4.7.1', reply: '451 4.7.1 later', host: 'mx.one.test', attempted: true, ...over,
});

describe('queue database statements', () => {
  it('marks recipients a peer took as transferred (final, queued ones only) and the message done when none is left open', () => {
    write({ op: 'insertMessage', message: message('M1') });
    write({ op: 'holdRecipients', select: { messageId: 'M1', domains: ['two.test'] }, now: T0 });
    expect(write({ op: 'transferRecipients', messageId: 'M1', ids: [0, 1], host: 'n2', reply: 'transferred to n2: 250 2.0.0 Ok', now: T0 + 5 })).toBe(1);
    expect(read.recipientsOf('M1')).toMatchObject([
      { id: 0, state: 'transferred', last_code: 250, last_host: 'n2', last_reply: 'transferred to n2: 250 2.0.0 Ok' },
      { id: 1, state: 'held' },
    ]);
    expect(read.message('M1')!.state).toBe('active');
    expect(queueStatus(db).counts).toEqual([{ tenant: 'a', state: 'transferred', n: 1 }, { tenant: 'b', state: 'held', n: 1 }]);
    write({ op: 'release', tenant: 'b', domain: null, now: T0 + 6 });
    expect(write({ op: 'transferRecipients', messageId: 'M1', ids: [1], host: 'n3', reply: 'transferred to n3: 250 ok', now: T0 + 7 })).toBe(1);
    expect(read.message('M1')!.state).toBe('done');
  });

  it('inserts a message with its recipients, numbered from 0, queued and due at arrival', () => {
    expect(write({ op: 'insertMessage', message: message('M1') })).toEqual([0, 1]);
    expect(read.message('M1')).toMatchObject({ id: 'M1', size: 123, sender: 'alice@src.test', received_at: T0, trace: 'Received: x\r\n', state: 'active', smtputf8: 0, quarantine: null });
    expect(read.recipientsOf('M1')).toMatchObject([
      { id: 0, message_id: 'M1', tenant: 'a', address: 'r0@one.test', state: 'queued', next_attempt: T0, attempts: 0, last_reply: null },
      { id: 1, message_id: 'M1', tenant: 'b', orcpt: 'rfc822;r1@two.test', notify: 'FAILURE', state: 'queued', next_attempt: T0 },
    ]);
    expect(read.openRecipients().map((r) => `${r.message_id}/${r.id}`)).toEqual(['M1/0', 'M1/1']);
  });

  it('inserts a quarantined message with its recipients held, saying why', () => {
    write({ op: 'insertMessage', message: message('MQ', { quarantine: 'virus found' }) });
    expect(read.recipientsOf('MQ').map((r) => [r.state, r.last_reply])).toEqual([['held', 'quarantined: virus found'], ['held', 'quarantined: virus found']]);
    expect(read.openRecipients()).toEqual([]);
    expect(readQuarantine(db)).toMatchObject([{ id: 'MQ', quarantine: 'virus found', recipients: 2 }]);
  });

  it('records an attempt: counts it once, keeps the first attempt time, and keeps earlier replies when none is given', () => {
    write({ op: 'insertMessage', message: message('M1') });
    write({ op: 'updateRecipients', messageId: 'M1', now: T0 + 10, updates: [update(0, {})] });
    write({ op: 'updateRecipients', messageId: 'M1', now: T0 + 20, updates: [update(0, { code: null, status: null, reply: null, host: null, warned: true, nextAttempt: T0 + 5000 })] });
    expect(read.recipientsOf('M1')[0]).toMatchObject({
      attempts: 2, first_attempt: T0 + 10, next_attempt: T0 + 5000, last_code: 451, last_status: '4.7.1', last_reply: '451 4.7.1 later', warned: 1, updated_at: T0 + 20,
    });
    // Not an attempt (a bounce owed retried without the destination): the count stays.
    write({ op: 'updateRecipients', messageId: 'M1', now: T0 + 30, updates: [update(0, { attempted: false, warned: false, owed: 'failed' })] });
    expect(read.recipientsOf('M1')[0]).toMatchObject({ attempts: 2, warned: 1, owed: 'failed' });
  });

  it('marks a message done once no recipient is open, and only touches queued recipients', () => {
    write({ op: 'insertMessage', message: message('M1') });
    write({ op: 'holdRecipients', select: { messageId: 'M1', tenant: 'b' }, now: T0 });
    expect(write({ op: 'updateRecipients', messageId: 'M1', now: T0 + 1, updates: [update(0, { state: 'delivered' }), update(1, { state: 'bounced' })] })).toBe(false);
    expect(read.recipientsOf('M1').map((r) => r.state)).toEqual(['delivered', 'held']);
    expect(read.message('M1')!.state).toBe('active');
    expect(read.doneMessages(10)).toEqual([]);

    expect(write({ op: 'purgeRecipients', select: { messageId: 'M1' }, now: T0 + 2, reason: 'spam run' })).toBe(1);
    expect(read.recipientsOf('M1')[1]).toMatchObject({ state: 'purged', last_reply: 'spam run' });
    expect(read.message('M1')!.state).toBe('done');
    expect(read.doneMessages(10)).toEqual(['M1']);

    write({ op: 'deleteMessage', id: 'M1' });
    expect(read.message('M1')).toBeUndefined();
    expect(read.recipientsOf('M1')).toEqual([]);
    expect(read.allMessages()).toEqual([]);
  });

  it('marks a message done when its last open recipient is delivered', () => {
    write({ op: 'insertMessage', message: message('M1') });
    expect(write({ op: 'updateRecipients', messageId: 'M1', now: T0, updates: [update(0, { state: 'delivered' }), update(1, { state: 'bounced' })] })).toBe(true);
    expect(read.doneMessages(10)).toEqual(['M1']);
  });

  it('holds and purges by tenant, by domains, and by message, never an entry set aside as corrupt', () => {
    write({ op: 'insertMessage', message: message('M1') });
    write({ op: 'insertMessage', message: message('M2') });
    write({ op: 'insertMessage', message: message('M3') });
    write({ op: 'setCorrupt', id: 'M3', note: 'damaged', at: T0 });

    expect(write({ op: 'holdRecipients', select: { tenant: 'a' }, now: T0 })).toBe(2);
    expect(write({ op: 'holdRecipients', select: { tenant: 'a' }, now: T0 })).toBe(0);
    expect(read.recipientsOf('M1')[0]).toMatchObject({ state: 'held', last_reply: 'held by an operator' });
    expect(read.recipientsOf('M3').map((r) => r.state)).toEqual(['queued', 'queued']);
    expect(write({ op: 'holdRecipients', select: { domains: ['two.test', 'nowhere.test'] }, now: T0 })).toBe(2);
    expect(queueStatus(db).counts).toEqual([{ tenant: 'a', state: 'held', n: 2 }, { tenant: 'b', state: 'held', n: 2 }]);
    expect(queueStatus(db).corrupt).toEqual([{ id: 'M3', note: 'damaged' }]);

    expect(write({ op: 'purgeRecipients', select: { messageId: 'M2', domains: ['one.test'] }, now: T0, reason: 'x' })).toBe(1);
    expect(read.recipientsOf('M2').map((r) => r.state)).toEqual(['purged', 'held']);
    expect(() => write({ op: 'holdRecipients', select: {}, now: T0 })).toThrow(/needs a message, a tenant or domains/);
  });

  it('releases held recipients by tenant and domain, leaving quarantined messages to releaseMessage', () => {
    write({ op: 'insertMessage', message: message('M1') });
    write({ op: 'insertMessage', message: message('MQ', { quarantine: 'spam' }) });
    write({ op: 'holdRecipients', select: { messageId: 'M1' }, now: T0 });

    const byDomain = write({ op: 'release', tenant: null, domain: 'two.test', now: T0 + 5 }) as Array<{ message_id: string; id: number; state: string; next_attempt: number }>;
    expect(byDomain.map((r) => [r.message_id, r.id, r.state, r.next_attempt])).toEqual([['M1', 1, 'queued', T0 + 5]]);
    const byTenant = write({ op: 'release', tenant: 'a', domain: null, now: T0 + 6 }) as Array<{ message_id: string; id: number }>;
    expect(byTenant.map((r) => `${r.message_id}/${r.id}`)).toEqual(['M1/0']);
    expect(read.recipientsOf('MQ').map((r) => r.state)).toEqual(['held', 'held']);

    const released = write({ op: 'releaseMessage', id: 'MQ', now: T0 + 7 }) as unknown[];
    expect(released).toHaveLength(2);
    expect(read.message('MQ')).toMatchObject({ quarantine: null, note: 'released from quarantine: spam' });
    expect(readQuarantine(db)).toEqual([]);
    expect(read.openRecipients().map((r) => `${r.message_id}/${r.id}`)).toEqual(['M1/0', 'M1/1', 'MQ/0', 'MQ/1']);
  });

  it('lists the domains with open recipients', () => {
    write({ op: 'insertMessage', message: message('M1') });
    write({ op: 'updateRecipients', messageId: 'M1', now: T0, updates: [update(0, { state: 'delivered' })] });
    expect(openDomains(db)).toEqual(['two.test']);
  });

  it('prunes scan records and transcripts older than `before`, keeping newer ones', () => {
    const scan = (queueId: string, at: number): ScanRecord => ({ queueId, at, action: 'accept', reason: '', tenants: ['a'], ms: 1, overheadMs: 0, runs: [], generation: 1 });
    write({ op: 'recordScans', records: [scan('OLD', T0 - 1000), scan('NEW', T0 + 1000)] });
    const chunk = (id: string, at: number): TranscriptChunk => ({
      connection: {
        id, startedAt: at, endedAt: at, host: 'mx.one.test', protocol: 'smtp', address: '192.0.2.9', port: 25, localAddress: null, localPort: null,
        tls: null, helo: 'me.test', tenant: 'a', messages: 1, commands: 1, lines: 1, bytesStored: 10, truncated: false, ended: 'quit',
      },
      messages: [{ n: 0, at, queueId: 'M1', tenant: 'a', recipients: ['r0@one.test'] }],
      lines: [{ seq: 0, at, dir: 'server', queueId: null, text: '220 hi' }],
    });
    write({ op: 'recordTranscript', chunk: chunk('C-OLD', T0 - 1000) });
    write({ op: 'recordTranscript', chunk: chunk('C-NEW', T0 + 1000) });

    expect(write({ op: 'pruneScans', before: T0 })).toBe(1);
    expect(readScan(db, 'OLD')).toBeUndefined();
    expect(readScan(db, 'NEW')).toMatchObject({ queue_id: 'NEW', tenants: 'a' });
    expect(write({ op: 'pruneTranscripts', before: T0 })).toBe(1);
    expect(readConnections(db, { last: 10 }).map((c) => c.id)).toEqual(['C-NEW']);
    expect(db.prepare(`SELECT COUNT(*) AS n FROM transcript_chunks`).get()).toEqual({ n: 1 });
    expect(db.prepare(`SELECT COUNT(*) AS n FROM connection_messages`).get()).toEqual({ n: 1 });
  });

  it('brings a database of an earlier version up to the schema', () => {
    const old = new Database(join(dir, 'old.db'));
    old.exec(`CREATE TABLE messages (id TEXT PRIMARY KEY, size INTEGER NOT NULL, sender TEXT NOT NULL, received_at INTEGER NOT NULL, trace TEXT NOT NULL,
      ret TEXT, envid TEXT, smtputf8 INTEGER NOT NULL DEFAULT 0, body8bit INTEGER NOT NULL DEFAULT 0, client TEXT NOT NULL DEFAULT '',
      helo TEXT NOT NULL DEFAULT '', auth_user TEXT, listener TEXT NOT NULL DEFAULT '', kind TEXT NOT NULL DEFAULT 'mail',
      state TEXT NOT NULL DEFAULT 'active', note TEXT) WITHOUT ROWID;
      CREATE TABLE scans (queue_id TEXT PRIMARY KEY, at INTEGER NOT NULL, action TEXT NOT NULL, reason TEXT NOT NULL, tenants TEXT NOT NULL,
      ms REAL NOT NULL, overhead_ms REAL NOT NULL, runs TEXT NOT NULL) WITHOUT ROWID;`);
    old.exec(SCHEMA);
    migrate(old);
    const columns = (table: string) => (old.prepare(`PRAGMA table_info(${table})`).all() as Array<{ name: string }>).map((c) => c.name);
    expect(columns('messages')).toEqual(expect.arrayContaining(['quarantine', 'strip', 'corrupt_kind', 'set_aside_at']));
    expect(columns('scans')).toContain('generation');
    // And the writer runs on it.
    expect(createWriter(old)({ op: 'insertMessage', message: message('M1', { quarantine: 'q', strip: 'x' }) })).toEqual([0, 1]);
    old.close();
  });
});
