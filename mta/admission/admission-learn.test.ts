// What one message teaches the known senders: the outcome from the accept step's result, the
// sending domain only when it is aligned, nothing from refusals that are not the engines' verdict.
import { describe, expect, it } from 'vitest';
import type { RunRecord, ScanRecord } from '../../engines/engines-records.js';
import type { VerdictAction } from '../../engines/engines-verdict.js';
import type { AcceptResult } from '../../queue/accept/accept-step.js';
import { alignedDomain, learnedFrom } from './admission-learn.js';

const ok = { code: 250, enhanced: '2.0.0', text: 'queued' };
const no = { code: 550, enhanced: '5.7.1', text: 'refused' };
const later = { code: 451, enhanced: '4.7.1', text: 'later' };

function auth(detail: Record<string, unknown>): RunRecord {
  return { engine: 'auth', kind: 'auth', shadow: false, status: 'clean', version: null, ms: 1, detail };
}

function record(action: VerdictAction, runs: RunRecord[] = []): ScanRecord {
  return { queueId: 'Q', at: 0, generation: 1, action, reason: '', tenants: [], ms: 1, overheadMs: 0, runs };
}

const queued = (action: VerdictAction, spamScore: number | null = null, runs: RunRecord[] = []): AcceptResult =>
  ({ kind: 'queued', reply: ok, queueId: 'Q', quarantined: action === 'quarantine', scan: { record: record(action, runs), spamScore } });

const dmarc = (from: string) => ({ domain: from });

describe('learnedFrom', () => {
  it('learns clean mail in normal times only; refusals and spam count at every level', () => {
    const spam = queued('tag', 3);
    const refused: AcceptResult = { kind: 'refused', reply: no, scan: { record: record('reject'), spamScore: 9 } };
    for (const level of ['busy', 'overload'] as const) {
      expect(learnedFrom({ address: '192.0.2.7', authUser: null, result: queued('accept', 0.1), level })).toBeNull();
      expect(learnedFrom({ address: '192.0.2.7', authUser: null, result: spam, level })?.outcome).toBe('spam');
      expect(learnedFrom({ address: '192.0.2.7', authUser: null, result: refused, level })?.outcome).toBe('refused');
    }
    expect(learnedFrom({ address: '192.0.2.7', authUser: null, result: queued('accept', 0.1), level: 'normal' })?.outcome).toBe('clean');
  });

  const cases: Array<[string, AcceptResult, ReturnType<typeof learnedFrom>]> = [
    ['queued, no engines', { kind: 'queued', reply: ok, queueId: 'Q', quarantined: false },
      { address: '192.0.2.7', authUser: null, domain: null, outcome: 'clean', score: null }],
    ['queued, accepted with a low score', queued('accept', 0.2),
      { address: '192.0.2.7', authUser: null, domain: null, outcome: 'clean', score: 0.2 }],
    ['queued but tagged', queued('tag', 0.6),
      { address: '192.0.2.7', authUser: null, domain: null, outcome: 'spam', score: 0.6 }],
    ['quarantined', queued('quarantine', null),
      { address: '192.0.2.7', authUser: null, domain: null, outcome: 'spam', score: null }],
    ['accepted, the score at the threshold (a vote mode let it pass)', queued('accept', 1),
      { address: '192.0.2.7', authUser: null, domain: null, outcome: 'spam', score: 1 }],
    ['refused by the verdict (5xx)', { kind: 'refused', reply: no, scan: { record: record('reject'), spamScore: 3 } },
      { address: '192.0.2.7', authUser: null, domain: null, outcome: 'refused', score: 3 }],
    ['refused by the verdict (4xx)', { kind: 'refused', reply: later, scan: { record: record('tempfail'), spamScore: null } },
      { address: '192.0.2.7', authUser: null, domain: null, outcome: 'refused', score: null }],
    ['refused before any scan (too big, spool full): nothing', { kind: 'refused', reply: no }, null],
    ['broke off: nothing', { kind: 'incomplete', reply: later, error: new Error('gone') }, null],
  ];
  it.each(cases)('%s', (_what, result, want) => {
    expect(learnedFrom({ address: '192.0.2.7', authUser: null, result })).toEqual(want);
  });

  it('passes the AUTH user and the aligned domain', () => {
    const runs = [auth({ spf: { result: 'none' }, dkim: [{ result: 'pass', aligned: 'mail.example.com' }], dmarc: dmarc('example.com') })];
    expect(learnedFrom({ address: '2001:db8::1', authUser: 'alice', result: queued('accept', null, runs) }))
      .toEqual({ address: '2001:db8::1', authUser: 'alice', domain: 'example.com', outcome: 'clean', score: null });
  });
});

describe('alignedDomain', () => {
  const cases: Array<[string, Record<string, unknown>, string | null]> = [
    ['DKIM passed and aligned', { dkim: [{ result: 'pass', aligned: 'example.com' }], dmarc: dmarc('Example.COM') }, 'example.com'],
    ['DKIM passed, not aligned (a third party signed)', { dkim: [{ result: 'pass', aligned: false }], dmarc: dmarc('example.com') }, null],
    ['DKIM aligned but failed', { dkim: [{ result: 'fail', aligned: 'example.com' }], dmarc: dmarc('example.com') }, null],
    ['SPF passed for the From domain', { spf: { result: 'pass', domain: 'example.com' }, dkim: [], dmarc: dmarc('example.com') }, 'example.com'],
    ['SPF passed for a subdomain of it', { spf: { result: 'pass', domain: 'bounce.example.com' }, dkim: [], dmarc: dmarc('example.com') }, 'example.com'],
    ['SPF passed for another domain', { spf: { result: 'pass', domain: 'badexample.com' }, dkim: [], dmarc: dmarc('example.com') }, null],
    ['SPF softfail for the From domain', { spf: { result: 'softfail', domain: 'example.com' }, dkim: [], dmarc: dmarc('example.com') }, null],
    ['no From domain (no DMARC detail)', { spf: { result: 'pass', domain: 'example.com' }, dkim: [], dmarc: null }, null],
    ['authenticated submission (skipped)', { skipped: 'authenticated' }, null],
  ];
  it.each(cases)('%s', (_what, detail, want) => {
    expect(alignedDomain([auth(detail)])).toBe(want);
  });

  it('reads only authentication engines', () => {
    const spam: RunRecord = { ...auth({ dkim: [{ result: 'pass', aligned: 'example.com' }], dmarc: dmarc('example.com') }), kind: 'spam' };
    expect(alignedDomain([spam])).toBeNull();
  });
});
