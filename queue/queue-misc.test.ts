import { describe, expect, it } from 'vitest';
import { wantsNotice } from './queue-bounce.js';
import { newQueueId, QUEUE_ID_PATTERN, queueIdTime } from '../base/base-queue-id.js';

describe('queue ids', () => {
  it('are unique, well-formed and sort in arrival order', () => {
    const ids = Array.from({ length: 20000 }, () => newQueueId());
    expect(new Set(ids).size).toBe(ids.length);
    expect(ids.every((id) => QUEUE_ID_PATTERN.test(id))).toBe(true);
    expect([...ids].sort()).toEqual(ids);
    const t = Date.now();
    expect(Math.abs(queueIdTime(newQueueId(t)) - t)).toBeLessThanOrEqual(1);
  });
});

describe('who gets a notice (RFC 3461)', () => {
  it.each([
    ['a@b.test', null, 'failed', true],
    ['a@b.test', null, 'delayed', true],
    ['', null, 'failed', false],
    ['a@b.test', 'NEVER', 'failed', false],
    ['a@b.test', 'SUCCESS', 'failed', false],
    ['a@b.test', 'FAILURE', 'failed', true],
    ['a@b.test', 'FAILURE', 'delayed', false],
    ['a@b.test', 'SUCCESS,DELAY', 'delayed', true],
  ] as const)('sender %j notify %j %s → %s', (sender, notify, action, expected) => {
    expect(wantsNotice({ sender }, { notify }, action)).toBe(expected);
  });
});
