import { describe, expect, it } from 'vitest';
import type { EngineKind, EngineOutcome } from './engine.js';
import { scanningSchema, tenantPolicy, type VerdictPolicy } from './engines-config.js';
import { decide, type EngineRun, type VerdictAction } from './engines-verdict.js';

const base = tenantPolicy(scanningSchema.parse({}), undefined);
const policy = (o: Parameters<typeof tenantPolicy>[1] = {}): VerdictPolicy => tenantPolicy(scanningSchema.parse({}), o);

function run(engine: string, kind: EngineKind, outcome: EngineOutcome | null, extra: Partial<EngineRun> = {}): EngineRun {
  return { engine, kind, shadow: false, weight: 1, onError: 'skip', ms: 5, ...(outcome ? { result: { outcome } } : {}), ...extra };
}
const clean = (engine = 'clamav') => run(engine, 'av', { status: 'clean' });
const virus = (engine = 'clamav', signature = 'Eicar-Test-Signature') => run(engine, 'av', { status: 'infected', signature });
const failed = (engine: string, kind: EngineKind, error: 'timeout' | 'refused' = 'timeout', extra: Partial<EngineRun> = {}) =>
  run(engine, kind, { status: 'error', error, message: error }, extra);
const unscannable = (engine: string, kind: EngineKind, reason = 'unparseable MIME: Max header size for a MIME node exceeded') =>
  run(engine, kind, { status: 'unscannable', reason });
const spam = (engine: string, score: number, threshold: number, extra: Partial<EngineRun> = {}, action?: 'reject' | 'add header' | 'soft reject' | 'no action') =>
  run(engine, 'spam', score >= threshold
    ? { status: 'spam', score: { score, threshold, symbols: [], action } }
    : { status: 'clean', score: { score, threshold, symbols: [], action } }, extra);

const table: Array<[string, EngineRun[], VerdictPolicy, VerdictAction, RegExp?]> = [
  ['nothing ran', [], base, 'accept'],
  ['one AV clean', [clean()], base, 'accept'],
  ['AV hit rejects', [virus()], base, 'reject', /virus Eicar-Test-Signature found by clamav/],
  ['AV hit quarantines when configured', [virus()], policy({ virus: 'quarantine' }), 'quarantine'],
  ['one AV of two finds it: the hit decides', [clean('clamav'), virus('icap')], base, 'reject', /found by icap/],
  ['AV hit beats a failed engine asking for tempfail', [virus(), failed('spamd', 'spam', 'timeout', { onError: 'tempfail' })], base, 'reject'],
  ['the only AV times out: below quorum, tempfail', [failed('clamav', 'av')], base, 'tempfail', /av quorum not met \(0 of 1/],
  ['the only AV times out, belowQuorum accept', [failed('clamav', 'av')], policy({ belowQuorum: 'accept' }), 'accept', /accepted unscanned: av/],
  ['one of two AVs fails: quorum 1 met', [failed('clamav', 'av'), clean('icap')], base, 'accept'],
  ['quorum 2 of two AVs, one fails', [failed('clamav', 'av'), clean('icap')], policy({ quorum: { av: 2 } }), 'tempfail'],
  ['quorum larger than the engines present asks for all of them', [clean('clamav')], policy({ quorum: { av: 3 } }), 'accept'],
  ['AV skipped for size is not expected to answer', [run('clamav', 'av', null, { skipped: 'size' })], base, 'accept'],
  ['AV disabled counts as not answered', [run('clamav', 'av', null, { skipped: 'disabled' })], base, 'tempfail'],
  ['onError tempfail on a spam engine', [clean(), failed('spamd', 'spam', 'refused', { onError: 'tempfail' })], base, 'tempfail', /spamd failed \(refused/],
  ['onError skip on a spam engine', [clean(), failed('spamd', 'spam')], base, 'accept'],
  ['ham', [clean(), spam('spamd', 1, 5)], base, 'accept'],
  ['tag level (0.5 of own threshold)', [spam('spamd', 3, 5)], base, 'tag', /spam \(score 0.6/],
  ['spamd GTUBE rejects', [spam('spamd', 1000, 5)], base, 'reject'],
  ['score mode: one engine at 1.2, the other at 0.2 → mean 0.7: tag', [spam('spamd', 6, 5), spam('rspamd', 3, 15)], base, 'tag'],
  ['weights: a heavier engine pulls the mean', [spam('spamd', 7, 5, { weight: 3 }), spam('rspamd', 3, 15)], base, 'reject'],
  ['the same scores unweighted only tag', [spam('spamd', 7, 5), spam('rspamd', 3, 15)], base, 'tag'],
  ['quarantine level between tag and reject', [spam('spamd', 4, 5)], policy({ spam: { quarantine: 0.7 } }), 'quarantine'],
  ['reject null: never reject for spam', [spam('spamd', 1000, 5)], policy({ spam: { reject: null } }), 'tag'],
  ['vote any: one engine reaching reject is enough', [spam('spamd', 10, 5), spam('rspamd', 0, 15)], policy({ spam: { mode: 'any' } }), 'reject'],
  ['vote majority: one of two is not a majority', [spam('spamd', 10, 5), spam('rspamd', 0, 15)], policy({ spam: { mode: 'majority' } }), 'accept'],
  ['vote majority: two of three', [spam('a', 10, 5), spam('b', 20, 15), spam('c', 0, 15)], policy({ spam: { mode: 'majority' } }), 'reject'],
  ['vote all: two of three is not all', [spam('a', 10, 5), spam('b', 20, 15), spam('c', 0, 15)], policy({ spam: { mode: 'all' } }), 'accept'],
  ['vote all at tag level', [spam('a', 3, 5), spam('b', 8, 15)], policy({ spam: { mode: 'all' } }), 'tag'],
  ['rspamd action reject counts as reaching reject', [spam('rspamd', 0, 15, {}, 'reject')], base, 'reject'],
  ['rspamd action add header counts as tag', [spam('rspamd', 1, 15, {}, 'add header')], base, 'tag'],
  ['rspamd soft reject asks for a tempfail', [clean(), spam('rspamd', 1, 15, {}, 'soft reject')], base, 'tempfail', /soft reject/],
  ['a shadow AV hit changes nothing', [clean(), virus('newvendor')].map((r, i) => (i === 1 ? { ...r, shadow: true } : r)), base, 'accept'],
  ['a shadow spam engine is not in the score', [spam('spamd', 1, 5), spam('trial', 1000, 5, { shadow: true })], base, 'accept'],
  ['a shadow engine does not help the quorum', [failed('clamav', 'av'), { ...clean('trial'), shadow: true }], base, 'tempfail'],
  ['policy violation rejects', [clean(), run('attachments', 'policy', { status: 'violation', rule: 'attachment "a.exe": blocked extension', action: 'reject' })], base, 'reject', /a\.exe/],
  ['DMARC quarantine', [clean(), run('auth', 'auth', { status: 'violation', rule: 'dmarc=fail (p=quarantine)', action: 'quarantine' })], base, 'quarantine'],
  ['a tag violation only tags', [run('auth', 'auth', { status: 'violation', rule: 'dmarc=fail (p=reject)', action: 'tag' })], base, 'tag'],
  ['quarantine beats tempfail', [virus(), failed('spamd', 'spam', 'timeout', { onError: 'tempfail' })], policy({ virus: 'quarantine' }), 'quarantine'],
  ['spam reject beats an AV tempfail', [failed('clamav', 'av'), spam('spamd', 1000, 5)], base, 'reject'],
  ['an unscannable result is never clean: refused by default', [unscannable('attachments', 'policy')], base, 'reject', /^not fully scanned by attachments: unparseable MIME/],
  ['unscannable quarantines when configured', [clean(), unscannable('attachments', 'policy')], policy({ unscannable: 'quarantine' }), 'quarantine'],
  ['an AV limit exceeded beside a clean AV still refuses', [clean('icap'), unscannable('clamav', 'av', 'limit of the scanner exceeded (Heuristics.Limits.Exceeded.MaxRecursion)')], base, 'reject', /MaxRecursion/],
  ['an AV hit is the reason given over an unscannable one', [unscannable('clamav', 'av'), virus('icap')], base, 'reject', /^virus .* found by icap/],
];

/** Structure past Ichidan's own limits, with whatever engines ran. */
const structured: Array<[string, EngineRun[], VerdictPolicy, VerdictAction, RegExp?]> = [
  ['no engines at all: refused', [], base, 'reject', /^structure: MIME nesting deeper than 16 levels$/],
  ['every engine clean: still refused', [clean(), run('attachments', 'policy', { status: 'clean' })], base, 'reject', /^structure: /],
  ['quarantine when configured', [clean()], policy({ unscannable: 'quarantine' }), 'quarantine', /^structure: /],
  ['a virus found is the reason given', [virus()], policy({ unscannable: 'quarantine' }), 'reject', /^virus /],
];

describe('decide()', () => {
  it.each(table)('%s', (_title, runs, p, action, reason) => {
    const v = decide(runs, p);
    expect(v.action).toBe(action);
    if (reason) expect(v.reason).toMatch(reason);
  });

  it.each(structured)('structure past the limits: %s', (_title, runs, p, action, reason) => {
    const v = decide(runs, p, 'MIME nesting deeper than 16 levels');
    expect(v.action).toBe(action);
    if (reason) expect(v.reason).toMatch(reason);
  });

  it('writes the headers a reader expects', () => {
    const v = decide([clean('clamav'), failed('icap', 'av'), spam('spamd', 3, 5), spam('rspamd', 2, 15),
      { ...run('auth', 'auth', { status: 'clean' }), result: { outcome: { status: 'clean' }, headers: ['Authentication-Results: mx.test; spf=pass'] } }], base);
    expect(v.headers).toEqual([
      'Authentication-Results: mx.test; spf=pass',
      'X-Spam-Status: Yes, score=0.37 tag=0.5 reject=1 mode=score engines=spamd=3/5,rspamd=2/15'.replace('Yes', 'No'),
      'X-Virus-Scanned: clean by clamav (icap timeout)',
    ]);
    const tagged = decide([spam('spamd', 3, 5)], base);
    expect(tagged.headers).toContain('X-Spam-Flag: YES');
    expect(tagged.subjectTag).toBeNull();
    expect(decide([spam('spamd', 3, 5)], policy({ spam: { subjectTag: '[SPAM]' } })).subjectTag).toBe('[SPAM]');
    expect(decide([spam('spamd', 1, 5)], policy({ spam: { subjectTag: '[SPAM]' } })).subjectTag).toBeNull();
    const tag = decide([run('auth', 'auth', { status: 'violation', rule: 'dmarc=fail (p=reject)\r\nBcc: x@evil.test', action: 'tag' })], base);
    expect(tag.headers).toEqual(['X-Ichidan-Tag: auth auth: dmarc=fail (p=reject)??Bcc: x@evil.test']);
    expect(decide([virus('clamav', 'Evil\x1b]0;x\x07 Sig')], base).reason).toBe('virus Evil?]0;x?_Sig found by clamav');
    const unscanned = decide([failed('clamav', 'av'), run('big', 'av', null, { skipped: 'size' })], policy({ belowQuorum: 'accept' }));
    expect(unscanned.headers).toContain('X-Ichidan-Unscanned: av quorum not met; too large for big');
  });
});

describe('tenant overrides', () => {
  it('keeps the global settings a tenant does not name', () => {
    const global = scanningSchema.parse({ spam: { tag: 0.4, reject: 2 }, quorum: { spam: 1 } });
    const p = tenantPolicy(global, { spam: { reject: 1.5 }, virus: 'quarantine' });
    expect(p).toEqual({ virus: 'quarantine', unscannable: 'reject', spam: { mode: 'score', tag: 0.4, quarantine: null, reject: 1.5, subjectTag: null }, quorum: { av: 1, spam: 1, auth: 0, policy: 0 }, belowQuorum: 'tempfail' });
  });
});
