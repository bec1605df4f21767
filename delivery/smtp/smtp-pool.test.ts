import { EventEmitter } from 'node:events';
import { describe, expect, it } from 'vitest';
import { SessionCache } from './smtp-pool.js';

/** Enough of a connection for the pool: it ends when told to QUIT (after `lag` ms) or closed. */
function fakeConnection(lag = 0) {
  const conn = Object.assign(new EventEmitter(), {
    _destroyed: false,
    _closing: false,
    quit() { conn._closing = true; setTimeout(() => conn.close(), lag); },
    close() { if (conn._destroyed) return; conn._destroyed = true; conn.emit('end'); },
  });
  return conn;
}

const limits = { maxConnections: 2, messagesPerConnection: 2, idleTimeout: 10_000 };

describe('session pools', () => {
  it('counts every connection of a pair until it ends, and closes an idle one to make room', async () => {
    const cache = new SessionCache();
    const a = fakeConnection();
    const b = fakeConnection();
    cache.opened('p', a as never);
    cache.opened('p', b as never);
    expect(cache.openCount('p')).toBe(2);
    cache.give('k', { conn: a as never, uses: 1, reused: false, transcript: null, clock: null as never, pair: 'p' }, limits);
    await cache.makeRoom('p', 2);
    expect(a._destroyed).toBe(true);
    expect(cache.openCount('p')).toBe(1);
  });

  it('waits for a connection still saying QUIT before the pair opens one more past its limit', async () => {
    const cache = new SessionCache();
    const a = fakeConnection(150);
    const b = fakeConnection();
    cache.opened('p', a as never);
    cache.opened('p', b as never);
    // a has carried its share: given back, it is told to QUIT and counts until it has ended
    cache.give('k', { conn: a as never, uses: 2, reused: false, transcript: null, clock: null as never, pair: 'p' }, limits);
    expect(a._closing).toBe(true);
    const started = Date.now();
    await cache.makeRoom('p', 2);
    expect(Date.now() - started).toBeGreaterThanOrEqual(140);
    expect(cache.openCount('p')).toBe(1);
  });

  it('gives up waiting after its grace period', async () => {
    const cache = new SessionCache();
    cache.opened('p', fakeConnection() as never);
    const started = Date.now();
    await cache.makeRoom('p', 1, 100);
    expect(Date.now() - started).toBeLessThan(400);
    expect(cache.openCount('p')).toBe(1);
  });
});
