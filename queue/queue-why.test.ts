import { describe, expect, it } from 'vitest';
import type { EgressEvent } from './queue-records-egress.js';
import type { MessageRow, RecipientRow } from './queue-store-sql.js';
import { messageRow, recipientRow } from './queue-rows.fixture.js';
import { relative, whyMessage, type WhyContext } from './queue-why.js';

const MIN = 60_000;
const RECEIVED = Date.UTC(2026, 11, 7, 3, 0, 0);
const NOW = RECEIVED + 10 * MIN;

function message(over: Partial<MessageRow> = {}): MessageRow {
  return messageRow(RECEIVED, over);
}

function rcpt(id: number, over: Partial<RecipientRow> = {}): RecipientRow {
  return recipientRow(id, RECEIVED, over);
}

function event(over: Partial<EgressEvent>): EgressEvent {
  return { id: 7, at: RECEIVED, kind: 'hold', actor: 'operator', tenant: null, site: null, source: null, until: null, reason: 'r', detail: null, block_id: null, undone_at: null, undone_by: null, uid: null, origin: null, ...over };
}

const ctx = (over: Partial<WhyContext> = {}): WhyContext => ({ now: NOW, maxAge: 2 * 86_400_000, blocks: [], siteOf: () => 'mx:mx.dst.test', ...over });
const deferred = { attempts: 3, next_attempt: NOW + 20 * MIN, last_reply: '451 4.7.1 greylisted', last_host: 'mx.dst.test[192.0.2.1]:25', last_code: 451, updated_at: NOW - MIN };

describe('why a message is where it is', () => {
  const table: Array<[string, MessageRow, RecipientRow[], WhyContext, RegExp[]]> = [
    ['deferred: count, last reply and host, next try, expiry', message(), [rcpt(0, deferred)], ctx(), [
      /^Message Q1 from <alice@src\.test> arrived 2026-12-07T03:00:00Z \(10m ago\)\. /,
      /r0@dst\.test was deferred 3 times, the last reply from mx\.dst\.test\[192\.0\.2\.1\]:25: "451 4\.7\.1 greylisted"; it is next tried at 2026-12-07T03:30:00Z \(in 20m\), and the queue gives up at 2026-12-09T03:00:00Z \(in 2d\) \(queue\.maxAge\)\.$/,
    ]],
    ['recipients in the same situation told together', message(), [rcpt(0, deferred), rcpt(1, deferred)], ctx(), [/r0@dst\.test, r1@dst\.test was deferred 3 times/]],
    ['waiting for a first attempt, due now', message(), [rcpt(0)], ctx(), [/r0@dst\.test waits for a first delivery attempt and is due now \(since 2026-12-07T03:00:00Z \(10m ago\)\)/]],
    ['a paused site and a tenant hold apply; another tenant\'s hold and another site\'s do not', message(), [rcpt(0, deferred)], ctx({
      blocks: [
        event({ id: 1, kind: 'paused', actor: 'auto', site: 'mx:mx.dst.test', source: '192.0.2.9', until: NOW + 5 * MIN, reason: 'throttled: 421 4.7.0 slow down' }),
        event({ id: 2, tenant: 'acme', until: null, reason: 'abuse report' }),
        event({ id: 3, tenant: 'other', reason: 'not ours' }),
        event({ id: 4, site: 'mx:elsewhere.test', reason: 'not ours either' }),
      ],
    }), [
      /Delivery waits: site mx:mx\.dst\.test \(from 192\.0\.2\.9\) is paused by the throttle control \(the destination pushed back\) until 2026-12-07T03:15:00Z \(in 5m\) \(egress event 1: throttled: 421 4\.7\.0 slow down\); tenant acme is held by an operator until released \(egress event 2: abuse report\)\.$/,
    ]],
    ['held by an operator', message(), [rcpt(0, { state: 'held', last_reply: 'held by an operator', updated_at: NOW - 2 * MIN })], ctx(), [
      /r0@dst\.test: held by an operator since 2026-12-07T03:08:00Z \(2m ago\), until released \(ichidan queue release\)\.$/,
    ]],
    ['held by a route', message(), [rcpt(0, { state: 'held', last_reply: 'held by route' })], ctx(), [/r0@dst\.test: held by a route \(routes: hold\) for dst\.test since/]],
    ['quarantined', message({ quarantine: 'rspamd: spam' }), [rcpt(0, { state: 'held', last_reply: 'quarantined: rspamd: spam' })], ctx(), [/r0@dst\.test is quarantined by the engines \(rspamd: spam\) and waits until an operator releases the message\./]],
    ['bounced with its class and the notice; every recipient final', message(), [rcpt(0, { state: 'bounced', bounce_class: 'bad-mailbox', last_reply: '550 5.1.1 no such user', last_host: 'mx.dst.test[192.0.2.1]:25', updated_at: NOW - MIN })], ctx(), [
      /r0@dst\.test: bounced 2026-12-07T03:09:00Z \(60s ago\) \(class bad-mailbox\) on "550 5\.1\.1 no such user" from mx\.dst\.test\[192\.0\.2\.1\]:25; a bounce went to the sender\. Every recipient is final/,
    ]],
    ['no bounce for a null sender or NOTIFY=NEVER', message({ sender: '' }), [rcpt(0, { state: 'bounced', last_reply: '550 5.1.1 x' })], ctx(), [/no bounce was sent \(null sender or NOTIFY\)/]],
    ['suppressed', message(), [rcpt(0, { state: 'bounced', bounce_class: 'suppressed', last_reply: '550 5.1.1 on the suppression list' })], ctx(), [/without contacting the destination, being on the tenant's suppression list/]],
    ['bounce owed', message(), [rcpt(0, { ...deferred, owed: 'failed', last_reply: '550 5.1.1 gone' })], ctx(), [/was refused for good \("550 5\.1\.1 gone" from mx\.dst\.test.*\), but its bounce could not be written yet: it is retried at/]],
    ['purged', message(), [rcpt(0, { state: 'purged', last_reply: 'deleted by an operator' })], ctx(), [/r0@dst\.test: removed .*, no notice sent \(deleted by an operator\)\./]],
    ['corrupt', message({ state: 'corrupt', corrupt_kind: 'damaged', note: 'spool file shorter than recorded', set_aside_at: NOW - MIN }), [rcpt(0)], ctx(), [/It was set aside as corrupt \(damaged: spool file shorter than recorded\) 2026-12-07T03:09:00Z \(60s ago\); nothing of it is delivered until an operator requeues or deletes it/]],
  ];
  it.each(table)('%s', (_name, msg, rows, c, want) => {
    const text = whyMessage(msg, rows, c);
    for (const w of want) expect(text).toMatch(w);
    expect(text).not.toMatch(/\n/);
  });

  it('says far times in days, near ones in seconds', () => {
    expect(relative(NOW + 2 * 86_400_000, NOW)).toBe('in 2d');
    expect(relative(NOW - 30_000, NOW)).toBe('30s ago');
    expect(relative(NOW + 3 * 3_600_000, NOW)).toBe('in 3h');
  });
});
