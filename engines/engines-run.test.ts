import pino from 'pino';
import { describe, expect, it } from 'vitest';
import type { Engine, EngineKind, EngineResult, ScanMessage } from './engine.js';
import { engineSchema, scanningSchema } from './engines-config.js';
import { EngineHost } from './engines-host.js';
import { EngineRunner, replyFor, runEngine, type EngineEntry } from './engines-run.js';

const message = (size = 100): ScanMessage => ({ path: '/nonexistent', size, open: () => { throw new Error('not read in these tests'); } });
const context = { queueId: 'Q', client: '192.0.2.1', helo: 'h', sender: 's@x.test', recipients: ['r@y.test'], authUser: null };

function entry(name: string, kind: EngineKind, scan: Engine['scan'], extra: Partial<EngineEntry['options']> = {}): EngineEntry {
  return {
    type: 'test',
    options: { name, timeout: 200, maxSize: 1000, oversize: 'skip', onError: 'skip', shadow: false, weight: 1, breaker: { failures: 5, window: 60_000, cooldown: 30_000 }, ...extra },
    engine: { name, kind, version: () => `${name}-1`, scan, close: async () => undefined },
  };
}
const answer = (result: EngineResult, ms = 0): Engine['scan'] => () => new Promise((r) => setTimeout(() => r(result), ms));
const clean: EngineResult = { outcome: { status: 'clean' } };
const virus: EngineResult = { outcome: { status: 'infected', signature: 'Test.Virus' } };

describe('runEngine', () => {
  it('answers the deadline itself when an adapter ignores its signal', async () => {
    const t0 = performance.now();
    const run = await runEngine(entry('deaf', 'av', () => new Promise(() => undefined), { timeout: 100 }), message(), context, new AbortController().signal);
    expect(run.result?.outcome).toMatchObject({ status: 'error', error: 'timeout' });
    expect(performance.now() - t0).toBeLessThan(300);
  });

  it('stops when the caller aborts (the DATA timeout) even before the engine deadline', async () => {
    const ac = new AbortController();
    setTimeout(() => ac.abort(), 50);
    const run = await runEngine(entry('slow', 'av', () => new Promise(() => undefined), { timeout: 10_000 }), message(), context, ac.signal);
    expect(run.result?.outcome).toMatchObject({ status: 'error', error: 'timeout' });
    expect(run.ms).toBeLessThan(1_000);
  });

  it('turns an adapter that throws into a protocol error', async () => {
    const run = await runEngine(entry('broken', 'av', async () => { throw new Error('bug'); }), message(), context, new AbortController().signal);
    expect(run.result?.outcome).toMatchObject({ status: 'error', error: 'protocol', message: 'adapter failed: bug' });
  });

  it('skips a message above maxSize without calling the engine', async () => {
    let called = false;
    const run = await runEngine(entry('small', 'av', async () => { called = true; return clean; }, { maxSize: 50 }), message(51), context, new AbortController().signal);
    expect(run).toMatchObject({ skipped: 'size', version: 'small-1' });
    expect(called).toBe(false);
  });

  it('judges a message above maxSize not fully scanned under oversize: unscannable, without calling the engine or its breaker', async () => {
    let called = false;
    const health = { admit: () => { throw new Error('not asked'); }, record: () => undefined, abandon: () => undefined };
    const policy = { ...entry('attachments', 'policy', async () => { called = true; return clean; }, { maxSize: 50, oversize: 'unscannable' }), health };
    const run = await runEngine(policy, message(51), context, new AbortController().signal);
    expect(run.result?.outcome).toEqual({ status: 'unscannable', reason: 'a message of 51 bytes is larger than its maxSize of 50' });
    expect(called).toBe(false);
    const decision = await new EngineRunner([policy, entry('clamav', 'av', answer(clean), { maxSize: 100 })], scanningSchema.parse({}), {})
      .scan(message(51), context, new AbortController().signal);
    expect(decision.reply).toMatchObject({ code: 550, enhanced: '5.7.1', text: 'message refused: content could not be fully scanned (attachments: a message of 51 bytes is larger than its maxSize of 50)' });
  });

  it("judges the message unscannable when a local engine's deadline passes, and its breaker does not count it; a daemon's deadline still counts", async () => {
    const host = new EngineHost(new Map(), () => undefined);
    const breaker = { failures: 2, window: '1m', cooldown: '10m' };
    const held = host.snapshot([
      engineSchema.parse({ name: 'attachments', type: 'policy', timeout: '30ms', breaker }),
      engineSchema.parse({ name: 'clamav', type: 'clamd', timeout: '30ms', breaker }),
    ], { hostname: 'mx.test', resolver: null, log: pino({ level: 'silent' }) });
    const hangs: Engine['scan'] = () => new Promise(() => undefined);
    const [policy, clamd] = held.entries.map((e) => ({ ...e, engine: { ...e.engine, scan: hangs } }));
    expect(policy.local).toBe(true);
    expect(clamd.local).toBe(false);
    for (let n = 0; n < 4; n++) {
      const run = await runEngine(policy, message(), context, new AbortController().signal);
      expect(run.result?.outcome).toEqual({ status: 'unscannable', reason: 'not judged within its timeout of 30 ms' });
    }
    for (let n = 0; n < 2; n++) {
      expect((await runEngine(clamd, message(), context, new AbortController().signal)).result?.outcome).toMatchObject({ status: 'error', error: 'timeout' });
    }
    expect(host.list().map((e) => [e.name, e.breaker, e.failures])).toEqual([['attachments', 'closed', 0], ['clamav', 'open', 2]]);
    const verdict = await new EngineRunner([policy], scanningSchema.parse({}), {}).scan(message(), context, new AbortController().signal);
    expect(verdict.reply).toMatchObject({ code: 550, enhanced: '5.7.1' });
    held.release();
  });

  it('gives the engine a signal that aborts at its deadline', async () => {
    let aborted = false;
    await runEngine(entry('polite', 'av', (_m, _c, signal) => new Promise((resolve) => {
      signal.addEventListener('abort', () => { aborted = true; resolve({ outcome: { status: 'error', error: 'timeout', message: 'x' } }); });
    }), { timeout: 50 }), message(), context, new AbortController().signal);
    expect(aborted).toBe(true);
  });
});

describe('EngineRunner', () => {
  it('runs engines in parallel: the verdict waits for the slowest, not the sum', async () => {
    const runner = new EngineRunner([
      entry('a', 'av', answer(clean, 150)), entry('b', 'av', answer(clean, 150)), entry('c', 'spam', answer({ outcome: { status: 'clean', score: { score: 1, threshold: 5, symbols: [] } } }, 150)),
    ], scanningSchema.parse({}), {});
    const d = await runner.scan(message(), context, new AbortController().signal);
    expect(d.verdict.action).toBe('accept');
    expect(d.ms).toBeLessThan(300);
    expect(d.overheadMs).toBeLessThan(d.ms);
  });

  it('runs each tenant through its own engines; the strongest verdict answers', async () => {
    const calls: string[] = [];
    const spy = (name: string, result: EngineResult) => async () => { calls.push(name); return result; };
    const runner = new EngineRunner([entry('av1', 'av', spy('av1', virus)), entry('av2', 'av', spy('av2', clean))],
      scanningSchema.parse({}), { lax: { engines: ['av2'] }, none: { engines: [] } });
    const lax = await runner.scan(message(), { ...context, tenants: ['lax'] }, new AbortController().signal);
    expect(calls).toEqual(['av2']);
    expect(lax.verdict.action).toBe('accept');
    calls.length = 0;
    const none = await runner.scan(message(), { ...context, tenants: ['none'] }, new AbortController().signal);
    expect(calls).toEqual([]);
    expect(none.verdict.action).toBe('accept');
    const mixed = await runner.scan(message(), { ...context, tenants: ['lax', 'other'] }, new AbortController().signal);
    expect(mixed.runs.map((r) => r.engine).sort()).toEqual(['av1', 'av2']);
    expect(mixed.verdict.action).toBe('reject');
    expect(mixed.reply).toMatchObject({ code: 550, enhanced: '5.7.1' });
  });

  it('applies a tenant\'s thresholds', async () => {
    const spam: EngineResult = { outcome: { status: 'clean', score: { score: 4, threshold: 5, symbols: [] } } };
    const runner = new EngineRunner([entry('sa', 'spam', answer(spam))], scanningSchema.parse({}), { strict: { spam: { reject: 0.7 } } });
    expect((await runner.scan(message(), { ...context, tenants: ['strict'] }, new AbortController().signal)).verdict.action).toBe('reject');
    expect((await runner.scan(message(), { ...context, tenants: ['other'] }, new AbortController().signal)).verdict.action).toBe('tag');
  });
});

describe('replyFor', () => {
  it.each([
    [{ action: 'reject', reason: 'virus Eicar-Test-Signature found by clamav' }, '550 5.7.1 message refused: virus found (Eicar-Test-Signature)'],
    [{ action: 'reject', reason: 'spam (score 200, score mode; spamd=1000/5)' }, '550 5.7.1 message refused as spam'],
    [{ action: 'reject', reason: 'policy attachments: attachment "a\u00e9.exe": blocked extension' }, '550 5.7.1 message refused: attachment "a?.exe": blocked extension'],
    [{ action: 'tempfail', reason: 'av quorum not met' }, '451 4.7.1 message could not be scanned now, try again later'],
    [{ action: 'tag', reason: 'spam' }, null],
    [{ action: 'quarantine', reason: 'virus' }, null],
  ])('%j', (v, expected) => {
    const r = replyFor({ ...v, headers: [], spamScore: null, unscanned: [] } as never);
    expect(r ? `${r.code} ${r.enhanced} ${r.text}` : null).toBe(expected);
  });
});
