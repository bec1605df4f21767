// AUTH under attack: failures cost growing delays, a session is closed after a few, an address and an
// account are blocked for a while; password checks run off the main thread, so guessers do not slow
// other senders.
import { afterEach, describe, expect, it } from 'vitest';
import { baseConfig, startApp, TEST_HASH, TEST_PASSWORD, waitUntil, type TestApp } from './helpers/app.js';
import { RawSmtp } from './helpers/raw-smtp.js';
import { authPlain, submissionSession } from './helpers/submission.js';

const plain = authPlain;
const submission = submissionSession;

async function timed(c: RawSmtp, line: string): Promise<{ reply: string; ms: number }> {
  const start = performance.now();
  const reply = await c.command(line);
  return { reply, ms: performance.now() - start };
}

function p90(samples: number[]): number {
  const sorted = [...samples].sort((a, b) => a - b);
  return sorted[Math.ceil(sorted.length * 0.9) - 1];
}

describe('AUTH penalties', () => {
  let t: TestApp | undefined;
  afterEach(async () => { await t?.stop(); t = undefined; });

  const start = (auth: Record<string, unknown>) => startApp((dir) => baseConfig(dir, {
    tenants: { alpha: { domains: ['alpha.test'] } },
    users: [{ name: 'ann@alpha.test', password: TEST_HASH, tenant: 'alpha' }],
    routes: { 'alpha.test': { hold: true } },
    auth,
  }));

  it('delays each failure longer, closes the session after three, blocks the address and the account, then lets the right password in', async () => {
    t = await start({ failureDelay: '200ms', maxDelay: '500ms', sessionFailures: 3, maxFailures: 5, window: '1m', block: '4s' });
    const c = await submission(t);
    const first = await timed(c, plain('ann@alpha.test', 'guess-1'));
    const second = await timed(c, plain('ann@alpha.test', 'guess-2'));
    expect(first.reply).toMatch(/^535 5\.7\.8 /);
    expect(second.reply).toMatch(/^535 5\.7\.8 /);
    expect(first.ms).toBeGreaterThanOrEqual(190);
    expect(second.ms).toBeGreaterThanOrEqual(390);
    const third = await timed(c, plain('ann@alpha.test', 'guess-3'));
    expect(third.reply).toMatch(/^421 4\.7\.0 /);
    await waitUntil(() => c.closed, 2000, 'the session to be closed');

    // Two more failures (another account name, same address) reach maxFailures for the address.
    const d = await submission(t);
    expect((await d.command(plain('bob@alpha.test', 'x'))).slice(0, 3)).toBe('535');
    expect((await d.command(plain('bob@alpha.test', 'y'))).slice(0, 3)).toBe('535');
    d.close();
    // Blocked: the right password gets the same temporary refusal as any other.
    const blocked = await submission(t);
    expect(await blocked.command(plain('ann@alpha.test', TEST_PASSWORD))).toMatch(/^454 4\.7\.0 /);
    expect(await blocked.command(plain('ann@alpha.test', 'wrong'))).toMatch(/^454 4\.7\.0 /);
    // The third refusal in a session closes it, blocked or not.
    expect(await blocked.command(plain('ann@alpha.test', TEST_PASSWORD))).toMatch(/^421 4\.7\.0 /);
    await waitUntil(() => blocked.closed, 2000, 'the blocked session to be closed');

    // ann's own failures (3) are below maxFailures: from another address she gets in; bob has 2.
    const e = await submission(t, '127.0.0.3');
    expect(await e.command(plain('ann@alpha.test', TEST_PASSWORD))).toMatch(/^235 /);
    e.close();

    // An account guessed from many addresses is blocked whatever the address.
    for (const from of ['127.0.0.4', '127.0.0.5', '127.0.0.6']) {
      const g = await submission(t, from);
      expect((await g.command(plain('bob@alpha.test', 'z'))).slice(0, 3)).toBe('535');
      g.close();
    }
    const f = await submission(t, '127.0.0.7');
    expect(await f.command(plain('bob@alpha.test', 'anything'))).toMatch(/^454 4\.7\.0 /);
    f.close();

    // The address block ends after auth.block.
    await new Promise((r) => setTimeout(r, 4100));
    const h = await submission(t);
    expect(await h.command(plain('ann@alpha.test', TEST_PASSWORD))).toMatch(/^235 /);
    h.close();
    const ok = t.logs.filter((l) => l.msg === 'authenticated');
    expect(ok.map((l) => [l.user, l.listener, l.client])).toEqual([
      ['ann@alpha.test', 'submission', '127.0.0.3'],
      ['ann@alpha.test', 'submission', '127.0.0.1'],
    ]);
  });

  it('does not let a guesser skip the delay by hanging up and coming back', async () => {
    t = await start({ failureDelay: '1500ms', maxDelay: '1500ms', sessionFailures: 3, maxFailures: 100 });
    const quitter = await submission(t, '127.0.0.60');
    quitter.send(plain('ann@alpha.test', 'guess') + '\r\n');
    await waitUntil(() => t!.logs.some((l) => l.msg === 'authentication failed' && l.client === '127.0.0.60'), 5000, 'the guess to be checked');
    const failedAt = performance.now();
    quitter.close();
    const back = await submission(t, '127.0.0.60');
    const retry = await timed(back, plain('ann@alpha.test', TEST_PASSWORD));
    expect(retry.reply).toMatch(/^235 /);
    // The answer waited for what was left of the first failure's delay.
    expect(performance.now() - failedAt).toBeGreaterThanOrEqual(1400);
    back.close();
  });

  it('does not block a trusted address, but does block an account guessed from it', async () => {
    t = await startApp((dir) => baseConfig(dir, {
      tenants: { alpha: { domains: ['alpha.test'] } },
      users: [{ name: 'ann@alpha.test', password: TEST_HASH, tenant: 'alpha' }],
      routes: { 'alpha.test': { hold: true } },
      trustedNetworks: ['127.0.0.50'],
      auth: { failureDelay: '10ms', maxDelay: '50ms', sessionFailures: 10, maxFailures: 3, block: '1m' },
    }));
    const c = await submission(t, '127.0.0.50');
    for (const name of ['x@alpha.test', 'y@alpha.test', 'z@alpha.test']) expect((await c.command(plain(name, 'guess'))).slice(0, 3)).toBe('535');
    for (let i = 0; i < 3; i++) expect((await c.command(plain('ann@alpha.test', `guess-${i}`))).slice(0, 3)).toBe('535');
    // ann's account is blocked, from the trusted address as from any other; the address itself is not.
    expect(await c.command(plain('ann@alpha.test', TEST_PASSWORD))).toMatch(/^454 4\.7\.0 /);
    c.close();
    const other = await submission(t, '127.0.0.51');
    expect(await other.command(plain('ann@alpha.test', TEST_PASSWORD))).toMatch(/^454 4\.7\.0 /);
    other.close();
    expect(t.logs.filter((l) => l.msg === 'authentication failed' && l.reason === 'blocked').length).toBe(2);
  });

  it('keeps other senders fast while eight clients guess passwords', async () => {
    // No penalties here: what is measured is the cost of the password checks themselves.
    t = await start({ failureDelay: 0, maxDelay: 0, sessionFailures: 1000, maxFailures: 100_000 });
    const app = t;
    const transaction = async (): Promise<number> => {
      const startAt = performance.now();
      const c = await RawSmtp.atData(app.port('mx'), 'someone@remote.test', ['user@alpha.test']);
      await c.finishData('Subject: latency\r\n\r\nbody\r\n');
      c.close();
      return (performance.now() - startAt) / 1000;
    };
    /** The p90 of at least `count` transactions over at least `minMs`, and until `enough()` holds (at most 60 s). */
    const measure = async (count: number, minMs = 0, enough: () => boolean = () => true) => {
      const samples: number[] = [];
      const start = performance.now();
      while (samples.length < count || performance.now() < start + minMs || (!enough() && performance.now() < start + 60_000)) samples.push(await transaction());
      return p90(samples);
    };
    await measure(10);
    const quiet = await measure(40);

    let stop = false;
    let guesses = 0;
    const guessers = Array.from({ length: 8 }, async (_, i) => {
      const c = await submission(app, `127.0.0.${10 + i}`);
      while (!stop) {
        const r = await c.command(plain('ann@alpha.test', `guess-${i}-${guesses++}`));
        if (!r.startsWith('535')) throw new Error(`guess → ${r}`);
      }
      c.close();
    });
    await waitUntil(() => guesses >= 8, 30_000, 'the guessers to start');
    const before = guesses;
    // Measured across at least 16 guesses, however slow a loaded machine makes each password check.
    const loaded = await measure(20, 2000, () => guesses - before >= 16);
    const during = guesses - before;
    stop = true;
    await Promise.all(guessers);
    console.log(`legitimate sender p90: ${quiet.toFixed(3)} s quiet, ${loaded.toFixed(3)} s with 8 guessers (${during} guesses meanwhile), ratio ${(loaded / quiet).toFixed(1)}`);
    expect(during).toBeGreaterThanOrEqual(16);
    expect(loaded).toBeLessThan(Math.max(8 * quiet, quiet + 0.15));
  }, 180_000);
});
