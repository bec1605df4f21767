import { describe, expect, it } from 'vitest';
import type { DeliveryResult, RecipientOutcome } from '../delivery/index.js';
import { attemptOutcome, retryDelay, type AttemptPlan } from './queue-attempt.js';
import { queueSchema } from './queue-config.js';
import type { MessageRow, RecipientRow } from './queue-store.js';
import { messageRow, recipientRow } from './queue-rows.fixture.js';

const q = queueSchema.parse({ retryInitial: '5m', retryMax: '1h', retryFactor: 2, retryJitter: 0.2, maxAge: '1d', delayWarning: '4h' });
const HOUR = 3_600_000;
const RECEIVED = 1_800_000_000_000;
/** An hour after arrival unless a row says otherwise. */
const NOW = RECEIVED + HOUR;

function message(over: Partial<MessageRow> = {}): MessageRow {
  return messageRow(RECEIVED, over);
}

function rcpt(id: number, over: Partial<RecipientRow> = {}): RecipientRow {
  return recipientRow(id, RECEIVED, over);
}

const said = (id: number, code: number, status: string, text: string): RecipientOutcome => ({
  id, verdict: code < 300 ? 'delivered' : code >= 500 ? 'bounced' : 'deferred', code, status, reply: `${code} ${status} ${text}`, host: 'mx.dst.test',
});
const outcomes = (...o: RecipientOutcome[]): DeliveryResult => ({ kind: 'outcomes', outcomes: o, signal: { kind: 'ok', detail: '' } });

interface Row {
  msg?: Partial<MessageRow>;
  rcpts?: RecipientRow[];
  result: DeliveryResult;
  now?: number;
  random?: number;
  want: {
    kind: AttemptPlan['kind'];
    updates?: Array<Record<string, unknown>>;
    /** Each notice: its action and the addresses it reports (with their reply, for bounces). */
    notices?: Array<{ action: string; recipients: Array<Record<string, unknown>> }>;
    /** Ids of the recipients sent this time. */
    attempted?: number[];
  };
}

const table: Array<[string, Row]> = [
  ['delivered', {
    result: outcomes(said(0, 250, '2.0.0', 'ok')),
    want: { kind: 'recorded', updates: [{ id: 0, state: 'delivered', nextAttempt: NOW, code: 250, status: '2.0.0', attempted: true }], notices: [], attempted: [0] },
  }],
  ['deferred, first retry after retryInitial (random 0.5: no jitter)', {
    result: outcomes(said(0, 451, '4.7.1', 'try later')), random: 0.5,
    want: { kind: 'recorded', updates: [{ id: 0, state: 'queued', nextAttempt: NOW + 300_000, code: 451, warned: false, attempted: true }], notices: [] },
  }],
  ['deferred, jitter −retryJitter (random 0)', {
    result: outcomes(said(0, 451, '4.7.1', 'try later')), random: 0,
    want: { kind: 'recorded', updates: [{ state: 'queued', nextAttempt: NOW + 240_000 }] },
  }],
  ['deferred, jitter +retryJitter (random 1)', {
    result: outcomes(said(0, 451, '4.7.1', 'try later')), random: 1,
    want: { kind: 'recorded', updates: [{ state: 'queued', nextAttempt: NOW + 360_000 }] },
  }],
  ['deferred on the third attempt: retryInitial × retryFactor²', {
    rcpts: [rcpt(0, { attempts: 2 })], result: outcomes(said(0, 451, '4.7.1', 'try later')), random: 0.5,
    want: { kind: 'recorded', updates: [{ state: 'queued', nextAttempt: NOW + 1_200_000 }] },
  }],
  ['deferred after many attempts: capped at retryMax', {
    rcpts: [rcpt(0, { attempts: 20 })], result: outcomes(said(0, 451, '4.7.1', 'try later')), random: 0.5,
    want: { kind: 'recorded', updates: [{ state: 'queued', nextAttempt: NOW + HOUR }] },
  }],
  ['deferred just before queue.maxAge: the retry is at the expiry, not after it', {
    now: RECEIVED + 24 * HOUR - 60_000, result: outcomes(said(0, 451, '4.7.1', 'try later')), random: 0.5,
    want: { kind: 'recorded', updates: [{ state: 'queued', nextAttempt: RECEIVED + 24 * HOUR }] },
  }],
  ['deferred past queue.maxAge: bounced, saying it gave up', {
    now: RECEIVED + 24 * HOUR, result: outcomes(said(0, 451, '4.7.1', 'try later')),
    want: {
      kind: 'recorded',
      updates: [{ id: 0, state: 'bounced', nextAttempt: RECEIVED + 24 * HOUR, reply: '451 4.7.1 try later (gave up: in the queue longer than queue.maxAge)' }],
      notices: [{ action: 'failed', recipients: [{ address: 'r0@dst.test', last_reply: '451 4.7.1 try later (gave up: in the queue longer than queue.maxAge)', attempts: 1 }] }],
    },
  }],
  ['bounced 5xx: a bounce to the sender', {
    result: outcomes(said(0, 550, '5.1.1', 'no such user')),
    want: {
      kind: 'recorded', updates: [{ id: 0, state: 'bounced', nextAttempt: NOW, code: 550, status: '5.1.1', reply: '550 5.1.1 no such user', attempted: true }],
      notices: [{ action: 'failed', recipients: [{ address: 'r0@dst.test', last_reply: '550 5.1.1 no such user', last_code: 550 }] }],
    },
  }],
  ['bounced with NOTIFY=NEVER: no notice', {
    rcpts: [rcpt(0, { notify: 'NEVER' })], result: outcomes(said(0, 550, '5.1.1', 'no such user')),
    want: { kind: 'recorded', updates: [{ state: 'bounced' }], notices: [] },
  }],
  ['bounced with NOTIFY=SUCCESS: no notice', {
    rcpts: [rcpt(0, { notify: 'SUCCESS' })], result: outcomes(said(0, 550, '5.1.1', 'no such user')),
    want: { kind: 'recorded', updates: [{ state: 'bounced' }], notices: [] },
  }],
  ['bounced with NOTIFY=FAILURE: a bounce', {
    rcpts: [rcpt(0, { notify: 'FAILURE' })], result: outcomes(said(0, 550, '5.1.1', 'no such user')),
    want: { kind: 'recorded', updates: [{ state: 'bounced' }], notices: [{ action: 'failed', recipients: [{ address: 'r0@dst.test' }] }] },
  }],
  ['bounced, a notice itself (null sender): no notice', {
    msg: { sender: '', kind: 'dsn' }, result: outcomes(said(0, 550, '5.1.1', 'no such user')),
    want: { kind: 'recorded', updates: [{ state: 'bounced' }], notices: [] },
  }],
  ['deferred past delayWarning: a delay warning', {
    now: RECEIVED + 4 * HOUR, result: outcomes(said(0, 451, '4.7.1', 'try later')),
    want: { kind: 'recorded', updates: [{ state: 'queued', warned: true }], notices: [{ action: 'delayed', recipients: [{ address: 'r0@dst.test', attempts: 1 }] }] },
  }],
  ['deferred past delayWarning with NOTIFY=DELAY: a delay warning', {
    now: RECEIVED + 4 * HOUR, rcpts: [rcpt(0, { notify: 'DELAY' })], result: outcomes(said(0, 451, '4.7.1', 'try later')),
    want: { kind: 'recorded', updates: [{ warned: true }], notices: [{ action: 'delayed', recipients: [{ address: 'r0@dst.test' }] }] },
  }],
  ['deferred past delayWarning with NOTIFY=FAILURE: no delay warning', {
    now: RECEIVED + 4 * HOUR, rcpts: [rcpt(0, { notify: 'FAILURE' })], result: outcomes(said(0, 451, '4.7.1', 'try later')),
    want: { kind: 'recorded', updates: [{ warned: false }], notices: [] },
  }],
  ['deferred past delayWarning, already warned: no second warning', {
    now: RECEIVED + 4 * HOUR, rcpts: [rcpt(0, { warned: 1 })], result: outcomes(said(0, 451, '4.7.1', 'try later')),
    want: { kind: 'recorded', updates: [{ warned: false }], notices: [] },
  }],
  ['deferred before delayWarning: no warning yet', {
    now: RECEIVED + 4 * HOUR - 1, result: outcomes(said(0, 451, '4.7.1', 'try later')),
    want: { kind: 'recorded', updates: [{ warned: false }], notices: [] },
  }],
  ['held by route: every recipient held, nothing attempted', {
    rcpts: [rcpt(0), rcpt(1)], result: { kind: 'hold' },
    want: {
      kind: 'held', updates: [
        { id: 0, state: 'held', nextAttempt: NOW, reply: 'held by route', attempted: false },
        { id: 1, state: 'held', nextAttempt: NOW, reply: 'held by route', attempted: false },
      ],
    },
  }],
  ['turned away at the banner for our connection count: not an attempt', {
    result: { kind: 'outcomes', outcomes: [said(0, 421, '4.7.0', 'too many connections')], signal: { kind: 'capped', detail: '421 too many connections' } },
    want: { kind: 'capped' },
  }],
  ['turned away at the banner with a bounce owed: the bounce is still recorded', {
    rcpts: [rcpt(0), rcpt(1, { owed: 'failed', attempts: 1, last_code: 550, last_status: '5.1.1', last_reply: '550 5.1.1 gone', last_host: 'mx.dst.test' })],
    result: { kind: 'outcomes', outcomes: [said(0, 421, '4.7.0', 'too many connections')], signal: { kind: 'capped', detail: '421 too many connections' } },
    random: 0.5,
    want: {
      kind: 'recorded',
      updates: [{ id: 0, state: 'queued', nextAttempt: NOW + 300_000 }, { id: 1, state: 'bounced', reply: '550 5.1.1 gone', attempted: false }],
      attempted: [0],
    },
  }],
  ['a bounce owed from an earlier attempt: not sent again, bounced with its recorded reply', {
    rcpts: [rcpt(0, { owed: 'failed', attempts: 1, last_code: 550, last_status: '5.1.1', last_reply: '550 5.1.1 gone', last_host: 'mx.dst.test' })],
    result: { kind: 'outcomes', outcomes: [] },
    want: {
      kind: 'recorded', updates: [{ id: 0, state: 'bounced', code: 550, status: '5.1.1', reply: '550 5.1.1 gone', host: 'mx.dst.test', attempted: false }],
      notices: [{ action: 'failed', recipients: [{ address: 'r0@dst.test', last_reply: '550 5.1.1 gone' }] }], attempted: [],
    },
  }],
  ['unreachable (every MX refused): each recipient deferred with the same reply', {
    rcpts: [rcpt(0), rcpt(1, { attempts: 1 })], random: 0.5,
    result: {
      kind: 'outcomes', signal: { kind: 'refused', detail: 'ECONNREFUSED' },
      outcomes: [0, 1].map((id) => ({ id, verdict: 'deferred' as const, code: 451, status: '4.4.1', reply: '451 4.4.1 connection refused', host: 'dst.test' })),
    },
    want: {
      kind: 'recorded', attempted: [0, 1],
      updates: [{ id: 0, state: 'queued', status: '4.4.1', nextAttempt: NOW + 300_000 }, { id: 1, state: 'queued', status: '4.4.1', nextAttempt: NOW + 600_000 }],
    },
  }],
  ['no outcome reported for a recipient: deferred 4.4.2', {
    rcpts: [rcpt(0), rcpt(1)], result: outcomes(said(0, 250, '2.0.0', 'ok')), random: 0.5,
    want: {
      kind: 'recorded', updates: [
        { id: 0, state: 'delivered' },
        { id: 1, state: 'queued', code: 451, status: '4.4.2', reply: '451 4.4.2 no outcome reported', host: 'dst.test', nextAttempt: NOW + 300_000 },
      ],
    },
  }],
  ['mixed: one delivered, one bounced, one deferred past delayWarning', {
    now: RECEIVED + 5 * HOUR, rcpts: [rcpt(0), rcpt(1), rcpt(2)],
    result: outcomes(said(0, 250, '2.0.0', 'ok'), said(1, 550, '5.1.1', 'no such user'), said(2, 452, '4.2.2', 'mailbox full')),
    want: {
      kind: 'recorded', updates: [{ id: 0, state: 'delivered' }, { id: 1, state: 'bounced' }, { id: 2, state: 'queued', warned: true }],
      notices: [{ action: 'failed', recipients: [{ address: 'r1@dst.test' }] }, { action: 'delayed', recipients: [{ address: 'r2@dst.test' }] }],
      attempted: [0, 1, 2],
    },
  }],
];

describe('retry delay', () => {
  it.each([
    [1, 0.5, 300_000],
    [2, 0.5, 600_000],
    [5, 0.5, 3_600_000],
    [30, 0.5, 3_600_000],
    [1, 0, 240_000],
    [1, 1, 360_000],
  ])('attempt %i with random %f → %i ms', (attempts, random, expected) => {
    expect(retryDelay(q, attempts, () => random)).toBe(expected);
  });
});

describe('attempt outcomes', () => {
  it.each(table)('%s', (_name, row) => {
    const plan = attemptOutcome({
      message: message(row.msg), recipients: row.rcpts ?? [rcpt(0)], result: row.result, domain: 'dst.test', config: q,
      now: row.now ?? NOW, random: () => row.random ?? 0.5,
    });
    expect(plan.kind).toBe(row.want.kind);
    if (row.want.updates) {
      expect(plan.kind === 'capped' ? [] : plan.updates).toMatchObject(row.want.updates);
    }
    if (row.want.notices) {
      expect(plan.kind === 'recorded' ? plan.notices : []).toMatchObject(row.want.notices);
    }
    if (row.want.attempted) {
      expect(plan.kind === 'recorded' ? plan.attempted.map((a) => a.recipient.id) : null).toEqual(row.want.attempted);
    }
  });

  it('gives, for a bounce, the updates that stand when its notice is not written or not committed', () => {
    const plan = attemptOutcome({
      message: message(), recipients: [rcpt(0, { attempts: 1 })], result: outcomes(said(0, 550, '5.1.1', 'no such user')),
      domain: 'dst.test', config: q, now: NOW, random: () => 0.5,
    });
    if (plan.kind !== 'recorded') throw new Error(`expected recorded, got ${plan.kind}`);
    const [notice] = plan.notices;
    // Not written: owed, retried after the delay of the attempt after this one (the third: 20 min).
    expect(notice.unwritten).toEqual([expect.objectContaining({ id: 0, state: 'queued', owed: 'failed', nextAttempt: NOW + 1_200_000, code: 550 })]);
    // Written but not committed: owed, due now (only the notice is retried, never the destination).
    expect(notice.uncommitted).toEqual([expect.objectContaining({ id: 0, state: 'queued', owed: 'failed', nextAttempt: NOW })]);
  });

  it('gives, for a delay warning, updates that do not count it as sent when it is not written', () => {
    const plan = attemptOutcome({
      message: message(), recipients: [rcpt(0)], result: outcomes(said(0, 451, '4.7.1', 'try later')),
      domain: 'dst.test', config: q, now: RECEIVED + 4 * HOUR, random: () => 0.5,
    });
    if (plan.kind !== 'recorded') throw new Error(`expected recorded, got ${plan.kind}`);
    const [notice] = plan.notices;
    expect(notice.action).toBe('delayed');
    expect(notice.unwritten).toEqual([expect.objectContaining({ id: 0, state: 'queued', warned: false, nextAttempt: RECEIVED + 4 * HOUR + 300_000 })]);
    expect(notice.uncommitted).toEqual(notice.unwritten);
  });
});

describe('bounce classes and suppression marks', () => {
  const DAY = 86_400_000;
  const rule = { classes: ['bad-mailbox', 'bad-domain'] as const, expire: 90 * DAY };
  const plan = (over: { rcpts?: RecipientRow[]; result: DeliveryResult; now?: number; stopped?: number[]; expire?: number }) => {
    const p = attemptOutcome({
      message: message(), recipients: over.rcpts ?? [rcpt(0)], result: over.result, domain: 'dst.test', config: q, now: over.now ?? NOW,
      random: () => 0.5, suppression: { classes: [...rule.classes], expire: over.expire ?? rule.expire }, stopped: new Set(over.stopped ?? []),
    });
    if (p.kind !== 'recorded') throw new Error(`expected recorded, got ${p.kind}`);
    return p;
  };

  it('marks a 5.1.1 bad-mailbox to be suppressed until now + expire, with the remote reply as the reason', () => {
    const p = plan({ result: outcomes(said(0, 550, '5.1.1', 'no such user')) });
    expect(p.updates[0]).toMatchObject({ state: 'bounced', bounceClass: 'bad-mailbox', suppress: { reason: '550 5.1.1 no such user', expiresAt: NOW + 90 * DAY } });
    // The notice's fallbacks keep the class, so an owed bounce is classified alike.
    expect(p.notices[0].unwritten[0]).toMatchObject({ state: 'queued', owed: 'failed', bounceClass: 'bad-mailbox' });
  });

  it('expire 0 suppresses until removed', () => {
    expect(plan({ result: outcomes(said(0, 550, '5.1.2', 'domain not found')), expire: 0 }).updates[0]).toMatchObject({ bounceClass: 'bad-domain', suppress: { expiresAt: null } });
  });

  it('classifies but does not suppress a class the rule leaves out (quota, policy)', () => {
    const p = plan({ rcpts: [rcpt(0), rcpt(1)], result: outcomes(said(0, 552, '5.2.2', 'mailbox full'), said(1, 550, '5.7.26', 'unauthenticated')) });
    expect(p.updates).toMatchObject([{ bounceClass: 'quota', suppress: null }, { bounceClass: 'policy', suppress: null }]);
  });

  it('does not suppress a recipient given up after temporary failures, whatever their class', () => {
    const p = plan({ now: RECEIVED + 2 * DAY, result: outcomes(said(0, 450, '4.1.1', 'user unknown, try later')) });
    expect(p.updates[0]).toMatchObject({ state: 'bounced', bounceClass: 'bad-mailbox', suppress: null });
  });

  it('gives a recipient the list stopped the class "suppressed": not attempted, not suppressed again', () => {
    const p = plan({ result: outcomes(said(0, 550, '5.1.1', '<r0@dst.test>: recipient suppressed after a hard bounce on 2027-01-15 (bad-mailbox)')), stopped: [0] });
    expect(p.updates[0]).toMatchObject({ state: 'bounced', bounceClass: 'suppressed', suppress: null, attempted: false });
    expect(p.attempted).toEqual([]);
    expect(p.notices[0].action).toBe('failed');
  });

  it('an owed bounce keeps the class it was recorded with', () => {
    const owed = rcpt(0, { owed: 'failed', attempts: 1, last_code: 550, last_status: '5.1.1', last_reply: '550 5.1.1 <r0@dst.test>: recipient suppressed', bounce_class: 'suppressed' });
    expect(plan({ rcpts: [owed], result: outcomes() }).updates[0]).toMatchObject({ state: 'bounced', bounceClass: 'suppressed', suppress: null });
  });
});
