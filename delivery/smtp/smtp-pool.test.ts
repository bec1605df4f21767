import { EventEmitter } from 'node:events';
import { describe, expect, it } from 'vitest';
import type { SmtpConnection } from './smtp-connection.js';
import { SmtpPool } from './smtp-pool.js';

/** Enough of a connection for the pool: it greets at once, ends when told to QUIT (after `lag` ms) or closed. */
function fakeConnection(lag = 0) {
  const conn = Object.assign(new EventEmitter(), {
    ended: false,
    closing: false,
    async connect() { return { code: 220, lines: ['fake'], raw: '220 fake' }; },
    async quit() { conn.closing = true; setTimeout(() => conn.close(), lag); },
    close() { if (conn.ended) return; conn.ended = true; conn.closing = true; conn.emit('end'); },
  });
  return conn;
}
type Fake = ReturnType<typeof fakeConnection>;
const asConnection = (c: Fake) => c as unknown as SmtpConnection;

const limits = { maxConnections: 2, messagesPerConnection: 2, idleTimeout: 10_000 };
const lease = (conn: Fake, uses: number) => ({ conn: asConnection(conn), uses, reused: false, transcript: null, clock: null as never, pair: 'p' });

describe('session pools', () => {
  it('counts every connection of a pair until it ends, and closes an idle one to make room', async () => {
    const pool = new SmtpPool();
    const a = fakeConnection();
    const b = fakeConnection();
    expect((await pool.open('p', 2, () => asConnection(a))).openWithThis).toBe(1);
    expect((await pool.open('p', 2, () => asConnection(b))).openWithThis).toBe(2);
    expect(pool.openCount('p')).toBe(2);
    pool.give('k', lease(a, 1), limits);
    await pool.makeRoom('p', 2);
    expect(a.ended).toBe(true);
    expect(pool.openCount('p')).toBe(1);
  });

  it('waits for a connection still saying QUIT before the pair opens one more past its limit', async () => {
    const pool = new SmtpPool();
    const a = fakeConnection(150);
    const b = fakeConnection();
    await pool.open('p', 2, () => asConnection(a));
    await pool.open('p', 2, () => asConnection(b));
    // a has carried its share: given back, it is told to QUIT and counts until it has ended
    pool.give('k', lease(a, 2), limits);
    expect(a.closing).toBe(true);
    const started = Date.now();
    await pool.makeRoom('p', 2);
    expect(Date.now() - started).toBeGreaterThanOrEqual(140);
    expect(pool.openCount('p')).toBe(1);
  });

  it('gives up waiting after its grace period', async () => {
    const pool = new SmtpPool();
    await pool.open('p', 1, () => asConnection(fakeConnection()));
    const started = Date.now();
    await pool.makeRoom('p', 1, 100);
    expect(Date.now() - started).toBeLessThan(400);
    expect(pool.openCount('p')).toBe(1);
  });

  it('lends an idle connection once, and never one that has ended meanwhile', async () => {
    const pool = new SmtpPool();
    const a = fakeConnection();
    const b = fakeConnection();
    await pool.open('p', 5, () => asConnection(a));
    await pool.open('p', 5, () => asConnection(b));
    pool.give('k', lease(a, 1), limits);
    pool.give('k', lease(b, 1), limits);
    b.close();
    const taken = pool.take('k');
    expect(taken?.conn).toBe(asConnection(a));
    expect(taken?.reused).toBe(true);
    expect(pool.take('k')).toBeUndefined();
  });

  it('stops counting a connection whose connect failed', async () => {
    const pool = new SmtpPool();
    const a = fakeConnection();
    a.connect = async () => { a.close(); throw Object.assign(new Error('refused'), { code: 'ECONNREFUSED' }); };
    await expect(pool.open('p', 2, () => asConnection(a))).rejects.toMatchObject({ code: 'ECONNREFUSED' });
    expect(pool.openCount('p')).toBe(0);
  });
});
