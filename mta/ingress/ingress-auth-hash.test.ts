// The password thread pool: checks give the right answer off the main thread, and a saturated pool
// says so at once instead of queueing without bound.
import { afterEach, describe, expect, it } from 'vitest';
import { PasswordVerifier } from './ingress-auth-hash.js';

const HASH = '$2b$10$TEDCb/Iks/50BtWEkXbvJ.RjnH8OjvAEP5opDiqXfo1cmxivF9mz2'; // "correct horse"

describe('PasswordVerifier', () => {
  let pool: PasswordVerifier | undefined;
  afterEach(async () => { await pool?.close(); });

  it('matches the right password only', async () => {
    pool = new PasswordVerifier({ workers: 1, queue: 4 });
    expect(await pool.verify('correct horse', HASH)).toBe(true);
    expect(await pool.verify('wrong', HASH)).toBe(false);
  });

  it('answers null once every thread is busy and the queue is full', async () => {
    pool = new PasswordVerifier({ workers: 1, queue: 1 });
    const running = pool.verify('a', HASH);
    const waiting = pool.verify('b', HASH);
    expect(running).not.toBeNull();
    expect(waiting).not.toBeNull();
    expect(pool.verify('c', HASH)).toBeNull();
    expect(await Promise.all([running, waiting])).toEqual([false, false]);
    expect(await pool.verify('correct horse', HASH)).toBe(true);
  });

  it('keeps the main thread free while checking', async () => {
    pool = new PasswordVerifier({ workers: 1, queue: 16 });
    const checks = Array.from({ length: 6 }, () => pool!.verify('wrong', HASH));
    let longest = 0;
    let last = performance.now();
    const timer = setInterval(() => {
      const now = performance.now();
      longest = Math.max(longest, now - last);
      last = now;
    }, 5);
    await Promise.all(checks);
    clearInterval(timer);
    // Six bcrypt checks at cost 10 take a few hundred milliseconds of CPU; none of it is here.
    expect(longest).toBeLessThan(60);
  });
});
