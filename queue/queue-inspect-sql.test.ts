import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { listMessages, readMessage } from './queue-inspect-sql.js';
import { configure, createWriter, migrate, SCHEMA, type NewMessage, type RecipientUpdate, type WriteOp } from './queue-store-sql.js';

const T0 = 1_800_000_000_000;
const HOUR = 3_600_000;

let dir: string;
let db: Database.Database;
let write: (op: WriteOp) => unknown;

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'ichidan-inspect-'));
  db = new Database(join(dir, 'queue.db'));
  configure(db, false);
  db.exec(SCHEMA);
  migrate(db);
  write = createWriter(db);
});

afterEach(() => {
  db.close();
  rmSync(dir, { recursive: true, force: true });
});

function message(id: string, receivedAt: number, over: Partial<NewMessage> = {}): NewMessage {
  return {
    id, size: 123, sender: 'alice@src.test', receivedAt, trace: '', ret: null, envid: null, smtputf8: false, body8bit: false,
    client: '192.0.2.1', helo: 'client.test', authUser: null, listener: 'mx', kind: 'mail',
    recipients: [
      { tenant: 'a', address: 'r0@one.test', domain: 'one.test', orcpt: null, notify: null },
      { tenant: 'b', address: 'r1@two.test', domain: 'two.test', orcpt: null, notify: null },
    ],
    ...over,
  };
}

const deferral = (id: number, session: string | null): RecipientUpdate => ({
  id, state: 'queued', nextAttempt: T0 + HOUR, code: 451, status: '4.7.1', reply: '451 4.7.1 later', host: 'mx.one.test', attempted: true, session,
});
const ids = (filter: Parameters<typeof listMessages>[1]) => listMessages(db, filter, T0 + 2 * HOUR).map((m) => m.message.id);

describe('the queue message by message', () => {
  it('keeps every attempt with its reply, host and session, only for attempts made, and removes them with the message', () => {
    write({ op: 'insertMessage', message: message('M1', T0) });
    write({ op: 'updateRecipients', messageId: 'M1', now: T0 + 10, updates: [deferral(0, 'S1')] });
    write({ op: 'updateRecipients', messageId: 'M1', now: T0 + 20, updates: [{ ...deferral(0, 'S2'), reply: '451 4.7.1 again' }] });
    // Held by a route: not an attempt.
    write({ op: 'updateRecipients', messageId: 'M1', now: T0 + 30, updates: [{ ...deferral(1, null), state: 'held', attempted: false, reply: 'held by route' }] });
    const stored = readMessage(db, 'M1')!;
    expect(stored.attempts).toMatchObject([
      { recipient: 0, at: T0 + 10, code: 451, reply: '451 4.7.1 later', host: 'mx.one.test', session: 'S1' },
      { recipient: 0, at: T0 + 20, reply: '451 4.7.1 again', session: 'S2' },
    ]);
    expect(stored.recipients.map((r) => r.state)).toEqual(['queued', 'held']);
    write({ op: 'deleteMessage', id: 'M1' });
    expect(readMessage(db, 'M1')).toBeUndefined();
    expect(db.prepare(`SELECT COUNT(*) AS n FROM attempts`).get()).toEqual({ n: 0 });
  });

  it('takes an operator bounce on held recipients only when asked (fromHeld), and a flush brings queued ones due now', () => {
    write({ op: 'insertMessage', message: message('M1', T0) });
    write({ op: 'holdRecipients', select: { messageId: 'M1', domains: ['two.test'] }, now: T0 });
    const bounce = { id: 1, state: 'bounced' as const, nextAttempt: T0, code: 550, status: '5.0.0', reply: 'returned', host: null, attempted: false, bounceClass: 'operator' };
    write({ op: 'updateRecipients', messageId: 'M1', now: T0 + 1, updates: [bounce] });
    expect(readMessage(db, 'M1')!.recipients[1].state).toBe('held');
    write({ op: 'updateRecipients', messageId: 'M1', now: T0 + 2, updates: [bounce], fromHeld: true });
    expect(readMessage(db, 'M1')!.recipients[1]).toMatchObject({ state: 'bounced', bounce_class: 'operator' });
    write({ op: 'updateRecipients', messageId: 'M1', now: T0 + 3, updates: [deferral(0, 'S1')] });
    const flushed = write({ op: 'flushRecipients', select: { messageId: 'M1' }, now: T0 + 4 }) as Array<{ id: number; next_attempt: number }>;
    expect(flushed.map((r) => [r.id, r.next_attempt])).toEqual([[0, T0 + 4]]);
  });

  it('filters by tenant, recipient, sender, age, domains and state; oldest first; limited', () => {
    write({ op: 'insertMessage', message: message('OLD', T0) });
    write({ op: 'insertMessage', message: message('NEW', T0 + 90 * 60_000, { sender: 'bob@other.test', recipients: [{ tenant: 'a', address: 'x@three.test', domain: 'three.test', orcpt: null, notify: null }] }) });
    write({ op: 'insertMessage', message: message('Q', T0 + HOUR, { quarantine: 'spam' }) });
    write({ op: 'updateRecipients', messageId: 'OLD', now: T0 + 10, updates: [deferral(0, null)] });
    expect(ids({ limit: 10 })).toEqual(['OLD', 'Q', 'NEW']);
    expect(ids({ limit: 1 })).toEqual(['OLD']);
    expect(ids({ tenant: 'b', limit: 10 })).toEqual(['OLD', 'Q']);
    expect(ids({ recipient: 'X@THREE', limit: 10 })).toEqual(['NEW']);
    expect(ids({ sender: 'bob@', limit: 10 })).toEqual(['NEW']);
    expect(ids({ olderThan: HOUR, limit: 10 })).toEqual(['OLD', 'Q']);
    expect(ids({ newerThan: HOUR, limit: 10 })).toEqual(['Q', 'NEW']);
    expect(ids({ domains: ['three.test'], limit: 10 })).toEqual(['NEW']);
    expect(ids({ state: 'deferred', limit: 10 })).toEqual(['OLD']);
    expect(ids({ state: 'queued', limit: 10 })).toEqual(['OLD', 'NEW']);
    expect(ids({ state: 'quarantined', limit: 10 })).toEqual(['Q']);
    expect(ids({ state: 'held', limit: 10 })).toEqual(['Q']);
    expect(ids({ state: 'bounced', limit: 10 })).toEqual([]);
  });

  it('reads a database made before attempts were kept', () => {
    write({ op: 'insertMessage', message: message('M1', T0) });
    db.exec('DROP TABLE attempts');
    expect(readMessage(db, 'M1')!.attempts).toEqual([]);
  });
});
