import Database from 'better-sqlite3';
import { describe, expect, it } from 'vitest';
import { depthReader } from './queue-depth.js';
import { migrate, SCHEMA } from './queue-store-sql.js';

function queueDb() {
  const db = new Database(':memory:');
  db.exec(SCHEMA);
  migrate(db);
  const message = db.prepare(`INSERT INTO messages (id, size, sender, received_at, trace) VALUES (?, 1, 's@x', ?, '')`);
  const recipient = db.prepare(`INSERT INTO recipients (message_id, id, tenant, address, domain, state, next_attempt, updated_at) VALUES (?, ?, ?, 'r@x', 'x', ?, 0, 0)`);
  return { db, add: (id: string, at: number, rows: Array<[string, string]>) => { message.run(id, at); rows.forEach(([tenant, state], i) => recipient.run(id, i, tenant, state)); } };
}

describe('queue depth', () => {
  it('counts queued and held recipients per tenant with their oldest arrival, from the index alone', () => {
    const { db, add } = queueDb();
    add('0000000A0000000', 1000, [['shop', 'queued'], ['news', 'held']]);
    add('0000000B0000000', 2000, [['shop', 'queued'], ['shop', 'delivered'], ['shop', 'held']]);
    add('0000000C0000000', 3000, [['news', 'bounced']]);
    const rows = depthReader(db)();
    expect(rows.sort((a, b) => `${a.tenant}${a.state}`.localeCompare(`${b.tenant}${b.state}`))).toEqual([
      { tenant: 'news', state: 'held', recipients: 1, oldest: 1000 },
      { tenant: 'shop', state: 'held', recipients: 1, oldest: 2000 },
      { tenant: 'shop', state: 'queued', recipients: 2, oldest: 1000 },
    ]);
    const plan = (db.prepare(`EXPLAIN QUERY PLAN SELECT tenant, state, count(*), min(message_id) FROM recipients INDEXED BY recipients_by_state
      WHERE state IN ('queued', 'held') GROUP BY state, tenant`).all() as Array<{ detail: string }>).map((r) => r.detail).join(' ');
    expect(plan).toMatch(/COVERING INDEX recipients_by_state/);
  });

  it('reads the database at most once per cache period', () => {
    const { db, add } = queueDb();
    let now = 10_000;
    const read = depthReader(db, 5000, () => now);
    expect(read()).toEqual([]);
    add('0000000A0000000', 1000, [['shop', 'queued']]);
    now += 4999;
    expect(read()).toEqual([]);
    now += 1;
    expect(read()).toEqual([{ tenant: 'shop', state: 'queued', recipients: 1, oldest: 1000 }]);
  });
});
