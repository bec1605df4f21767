import { describe, expect, it } from 'vitest';
import { bannerCapSignal, errorSignal, isThrottleReply, ReplyClock, worse } from './delivery-throttle.js';

describe('throttle signals', () => {
  it.each([
    [421, '4.7.0 Too many connections from your IP', true],
    [421, 'Service not available, closing transmission channel', true],
    [451, '4.7.1 Rate limit exceeded, try again later', true],
    [450, '4.7.650 The mail server has been temporarily rate limited due to IP reputation', true],
    [451, 'Temporarily deferred due to unexpected volume', true],
    [452, '4.5.3 Too many recipients', false],
    [451, '4.7.1 Greylisted, please try again later', false],
    [450, '4.2.0 Mailbox busy', false],
    [451, '4.3.0 Local error in processing', false],
    [550, '5.7.1 Message rejected: rate limit', false],
    [250, '2.0.0 ok', false],
  ])('%i %s → %s', (code, text, expected) => {
    expect(isThrottleReply(code, text)).toBe(expected);
  });

  it.each([
    [421, '4.7.0 mx.example Error: too many connections from 127.0.0.1', 11, 'capped'],
    [421, '4.7.0 mx.example Error: too many connections from 127.0.0.1', 1, null],
    [421, '4.3.2 The maximum number of concurrent server connections has exceeded a limit, closing transmission channel', 4, 'capped'],
    [421, 'Too many concurrent SMTP connections from this IP address; please try again later.', 3, 'capped'],
    [421, '4.7.0 Service not available, closing transmission channel', 11, null],
    [421, '4.7.0 Rate limit exceeded: too many messages', 11, null],
    [554, '5.7.1 too many connections', 11, null],
  ])('banner %i %s with %i open → %s', (code, text, open, kind) => {
    const signal = bannerCapSignal(code, text, open);
    expect(signal?.kind ?? null).toBe(kind);
    if (signal) expect(signal.open).toBe(open);
  });

  it('names connection errors', () => {
    expect(errorSignal('ECONNREFUSED', 'connect ECONNREFUSED 127.0.0.1:25').kind).toBe('refused');
    expect(errorSignal('ECONNRESET', 'socket hang up').kind).toBe('refused');
    expect(errorSignal('ETIMEDOUT', 'Greeting never received').kind).toBe('slow');
    expect(errorSignal('ETLS', 'certificate has expired').kind).toBe('failed');
  });

  it('keeps the more telling signal', () => {
    const ok = { kind: 'ok' as const, detail: '' };
    const slow = { kind: 'slow' as const, detail: 's' };
    const throttled = { kind: 'throttled' as const, detail: 't' };
    expect(worse(null, ok)).toBe(ok);
    expect(worse(ok, slow)).toBe(slow);
    expect(worse(throttled, slow)).toBe(throttled);
  });

  it('times each reply from the command before it, per message, and forwards every line', () => {
    let now = 1_000;
    const forwarded: string[] = [];
    const next = Object.fromEntries(['trace', 'debug', 'info', 'warn', 'error', 'fatal'].map((l) => [l, (_e: unknown, m?: string) => forwarded.push(String(m))])) as never;
    const clock = new ReplyClock(next, () => now);
    now += 50;
    clock.logger.debug({ tnx: 'server' }, '220 mx.test ESMTP');
    clock.logger.debug({ tnx: 'client' }, 'EHLO me');
    now += 3_000;
    clock.logger.debug({ tnx: 'server' }, '250 mx.test');
    expect(clock.signal(2_000)).toEqual({ kind: 'slow', detail: 'a reply took 3000 ms (slowReply 2000 ms)' });
    clock.reset();
    clock.logger.debug({ tnx: 'client' }, 'MAIL FROM:<a@b>');
    now += 10;
    clock.logger.debug({ tnx: 'server' }, '250 ok');
    expect(clock.signal(2_000).kind).toBe('ok');
    clock.logger.debug({ tnx: 'client' }, 'RCPT TO:<c@d>');
    clock.logger.debug({ tnx: 'server' }, '451-4.7.1 slow down\n451 4.7.1 rate limited');
    expect(clock.signal(2_000)).toEqual({ kind: 'throttled', detail: '451-4.7.1 slow down / 451 4.7.1 rate limited' });
    expect(forwarded).toHaveLength(7);
  });
});
