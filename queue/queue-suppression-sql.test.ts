import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { configure, createWriter, migrate, queueStatus, SCHEMA, type NewMessage, type RecipientUpdate } from './queue-store-sql.js';
import { createSuppressionReader, readSuppressions, type SuppressionEntry } from './queue-suppression-sql.js';

const T0 = 1_800_000_000_000;
const DAY = 86_400_000;
let dir: string;

beforeEach(() => { dir = mkdtempSync(join(tmpdir(), 'ichidan-supp-')); });
afterEach(() => rmSync(dir, { recursive: true, force: true }));

/** A queue database as the version before bounce classes made it: recipients without bounce_class, no suppressions. */
function oldDatabase(): Database.Database {
  const db = new Database(join(dir, 'queue.db'));
  configure(db, false);
  db.exec(`CREATE TABLE recipients (message_id TEXT NOT NULL, id INTEGER NOT NULL, tenant TEXT NOT NULL, address TEXT NOT NULL,
    domain TEXT NOT NULL, orcpt TEXT, notify TEXT, state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, next_attempt INTEGER NOT NULL,
    first_attempt INTEGER, last_code INTEGER, last_status TEXT, last_reply TEXT, last_host TEXT, warned INTEGER NOT NULL DEFAULT 0,
    owed TEXT, updated_at INTEGER NOT NULL, PRIMARY KEY (message_id, id)) WITHOUT ROWID;`);
  return db;
}

const message = (id: string, tenants: string[]): NewMessage => ({
  id, size: 1, sender: 's@src.test', receivedAt: T0, trace: '', ret: null, envid: null, smtputf8: false, body8bit: false,
  client: '', helo: '', authUser: null, listener: 'submission', kind: 'mail',
  recipients: tenants.map((tenant) => ({ tenant, address: 'Gone@Dst.test', domain: 'dst.test', orcpt: null, notify: null })),
});

const bounced = (id: number, over: Partial<RecipientUpdate> = {}): RecipientUpdate => ({
  id, state: 'bounced', nextAttempt: T0, code: 550, status: '5.1.1', reply: '550 5.1.1 no such user', host: 'mx.dst.test', attempted: true,
  bounceClass: 'bad-mailbox', suppress: { reason: '550 5.1.1 no such user', expiresAt: T0 + 90 * DAY }, ...over,
});

describe('suppression list in the queue database', () => {
  it('migrates an earlier database, and a hard bounce adds its tenant\'s entry with the outcome', () => {
    const db = oldDatabase();
    db.exec(SCHEMA);
    migrate(db);
    const write = createWriter(db);
    write({ op: 'insertMessage', message: message('M1', ['a', 'b']) });
    // Recipient 0 (tenant a) bounces hard and is suppressed; recipient 1 (tenant b) bounces for quota, not suppressed.
    write({ op: 'updateRecipients', messageId: 'M1', now: T0, updates: [bounced(0), bounced(1, { code: 552, status: '5.2.2', bounceClass: 'quota', suppress: null })] });
    const rows = db.prepare(`SELECT id, state, bounce_class FROM recipients ORDER BY id`).all();
    expect(rows).toEqual([{ id: 0, state: 'bounced', bounce_class: 'bad-mailbox' }, { id: 1, state: 'bounced', bounce_class: 'quota' }]);
    const lookup = createSuppressionReader(db);
    expect(lookup('a', 'gone@dst.test', T0 + 1)).toMatchObject({ tenant: 'a', address: 'gone@dst.test', class: 'bad-mailbox', source: 'bounce', reason: '550 5.1.1 no such user', created_at: T0, expires_at: T0 + 90 * DAY });
    // Never across tenants, any case of the address, and not past its expiry.
    expect(lookup('b', 'gone@dst.test', T0 + 1)).toBeUndefined();
    expect(lookup('a', 'GONE@dst.TEST', T0 + 1)).toBeDefined();
    expect(lookup('a', 'gone@dst.test', T0 + 90 * DAY)).toBeUndefined();
    expect(queueStatus(db).bounced).toEqual([]);
    // An SMTPUTF8 address is kept under the same key the lookups make.
    write({ op: 'insertMessage', message: { ...message('M2', ['a']), recipients: [{ tenant: 'a', address: 'Ünïcode@Dst.test', domain: 'dst.test', orcpt: null, notify: null }] } });
    write({ op: 'updateRecipients', messageId: 'M2', now: T0, updates: [bounced(0)] });
    expect(lookup('a', 'ünïcode@dst.test', T0 + 1)).toMatchObject({ address: 'ünïcode@dst.test' });
    expect(readSuppressions(db, { match: 'ÜNÏ' }, T0 + 1).map((e) => e.address)).toEqual(['ünïcode@dst.test']);
    db.close();
  });

  it('adds no entry when the outcome does not stand (the recipient was no longer queued)', () => {
    const db = new Database(join(dir, 'queue.db'));
    db.exec(SCHEMA);
    migrate(db);
    const write = createWriter(db);
    write({ op: 'insertMessage', message: message('M1', ['a', 'a']) });
    write({ op: 'purgeRecipients', select: { messageId: 'M1' }, now: T0, reason: 'purged' });
    write({ op: 'updateRecipients', messageId: 'M1', now: T0, updates: [bounced(0)] });
    expect(readSuppressions(db, {}, T0)).toEqual([]);
    db.close();
  });

  it('adds, lists by filter, removes and prunes operator entries', () => {
    const db = new Database(join(dir, 'queue.db'));
    db.exec(SCHEMA);
    migrate(db);
    const write = createWriter(db);
    const entry = (tenant: string, address: string, over: Partial<SuppressionEntry> = {}): SuppressionEntry => ({
      tenant, address, class: 'bad-mailbox', reason: 'imported', source: 'import', created_at: T0, expires_at: null, ...over,
    });
    expect(write({ op: 'suppressionAdd', entries: [entry('a', 'X@one.test'), entry('a', 'y@two.test', { class: 'policy', expires_at: T0 + DAY }), entry('b', 'x@one.test', { created_at: T0 + 5 })] })).toBe(3);
    expect(readSuppressions(db, { tenant: 'a' }, T0).map((e) => e.address)).toEqual(['x@one.test', 'y@two.test']);
    expect(readSuppressions(db, { class: 'policy' }, T0).map((e) => e.address)).toEqual(['y@two.test']);
    expect(readSuppressions(db, { match: 'ONE.test' }, T0).map((e) => e.tenant)).toEqual(['b', 'a']);
    expect(readSuppressions(db, { tenant: 'a' }, T0 + DAY).map((e) => e.address)).toEqual(['x@one.test']);
    expect(readSuppressions(db, { tenant: 'a', expired: true }, T0 + DAY)).toHaveLength(2);
    expect(write({ op: 'suppressionPrune', now: T0 + DAY })).toBe(1);
    expect(write({ op: 'suppressionRemove', tenant: 'a', address: 'x@ONE.test' })).toBe(1);
    expect(write({ op: 'suppressionRemove', tenant: 'a', address: 'x@one.test' })).toBe(0);
    expect(readSuppressions(db, {}, T0).map((e) => e.tenant)).toEqual(['b']);
    db.close();
  });

  it('reads nothing from a database made before the list existed (the CLI opens it read-only)', () => {
    const db = oldDatabase();
    expect(readSuppressions(db, {}, T0)).toEqual([]);
    db.close();
  });
});
