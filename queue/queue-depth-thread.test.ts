import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { afterEach, describe, expect, it } from 'vitest';
import { DepthThread } from './queue-depth-thread.js';
import { configure, migrate, SCHEMA } from './queue-store-sql.js';

const cleanup: Array<() => Promise<void> | void> = [];
afterEach(async () => {
  for (const f of cleanup.splice(0).reverse()) await f();
});

/** A queue database on disk (WAL, as the queue keeps it) with `n` messages of one queued recipient each, and a thread reading it. */
function queueFile(n: number) {
  const dir = mkdtempSync(join(tmpdir(), 'ichidan-depth-'));
  const file = join(dir, 'queue.db');
  const db = new Database(file);
  configure(db, false);
  db.exec(SCHEMA);
  migrate(db);
  const message = db.prepare(`INSERT INTO messages (id, size, sender, received_at, trace) VALUES (?, 1, 's@x', ?, '')`);
  const recipient = db.prepare(`INSERT INTO recipients (message_id, id, tenant, address, domain, state, next_attempt, updated_at) VALUES (?, 0, ?, 'r@x', ?, ?, 0, 0)`);
  db.transaction(() => {
    for (let i = 0; i < n; i++) {
      const id = String(i).padStart(15, '0');
      message.run(id, 1000 + i);
      recipient.run(id, i % 2 ? 'shop' : 'news', `d${i % 3}.test`, i % 5 === 4 ? 'held' : 'queued');
    }
  })();
  const thread = new DepthThread(file);
  cleanup.push(() => rmSync(dir, { recursive: true, force: true }), () => { db.close(); }, () => thread.close());
  return { db, thread, file };
}

describe('the queue depth thread', () => {
  it('reads the depth per tenant and state and per tenant and domain from the database file', async () => {
    const { thread, db } = queueFile(10);
    const rows = (await thread.rows()).sort((a, b) => `${a.tenant}${a.state}`.localeCompare(`${b.tenant}${b.state}`));
    expect(rows).toEqual([
      { tenant: 'news', state: 'held', recipients: 1, oldest: 1004 },
      { tenant: 'news', state: 'queued', recipients: 4, oldest: 1000 },
      { tenant: 'shop', state: 'held', recipients: 1, oldest: 1009 },
      { tenant: 'shop', state: 'queued', recipients: 4, oldest: 1001 },
    ]);
    expect(await thread.domains()).toEqual({ tenants: { news: 5, shop: 5 }, domains: { 'd0.test': 4, 'd1.test': 3, 'd2.test': 3 } });
    // A commit made since is seen (the per-domain read is not cached).
    db.prepare(`UPDATE recipients SET state = 'delivered' WHERE domain = 'd0.test'`).run();
    expect(await thread.domains()).toEqual({ tenants: { news: 3, shop: 3 }, domains: { 'd1.test': 3, 'd2.test': 3 } });
  });

  it('leaves the event loop free while it reads a deep queue', async () => {
    const { thread } = queueFile(100_000);
    await thread.rows();
    let ticks = 0;
    const timer = setInterval(() => ticks++, 2);
    const started = performance.now();
    const depth = await thread.domains();
    const took = performance.now() - started;
    clearInterval(timer);
    expect(Object.values(depth.tenants).reduce((a, b) => a + b, 0)).toBe(100_000);
    // Read on this thread, no timer could have fired before the answer; here they went on meanwhile.
    expect(ticks).toBeGreaterThanOrEqual(Math.min(5, Math.floor(took / 10)));
    expect(ticks).toBeGreaterThan(0);
  });

  it('rejects a request once closed, and when the database cannot be opened', async () => {
    const { thread } = queueFile(1);
    await thread.close();
    await expect(thread.rows()).rejects.toThrow(/closed/);
    const missing = new DepthThread(join(tmpdir(), 'ichidan-depth-none', 'queue.db'));
    cleanup.push(() => missing.close());
    await expect(missing.domains()).rejects.toThrow(/unable to open|does not exist|SQLITE_CANTOPEN|exited/i);
  });
});
