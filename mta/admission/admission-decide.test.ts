import { describe, expect, it } from 'vitest';
import { admissionSchema } from './admission-config.js';
import { decideDoor, decideMail, decideRcpt, reservedSessions, type DoorInput } from './admission-decide.js';

const config = (over: Record<string, unknown> = {}) => admissionSchema.parse(over);
const door = (over: Partial<DoorInput>): DoorInput => ({ level: 'normal', standing: 'unknown', open: 0, limit: 100, networkOpen: 0, ...over });

describe('admission at the door', () => {
  it.each([
    // level, standing, open, networkOpen → action, reason, code
    ['normal', 'unknown', 0, 0, 'greet', 'unknown', null],
    ['normal', 'known', 0, 0, 'greet', 'known', null],
    ['normal', 'pinned', 99, 9, 'greet', 'known', null],
    ['normal', 'blocked', 0, 0, 'refuse', 'blocked', 554],
    ['overload', 'blocked', 0, 0, 'refuse', 'blocked', 554],
    ['normal', 'unknown', 79, 0, 'greet', 'unknown', null],
    ['normal', 'unknown', 80, 0, 'refuse', 'reserve', 421],
    ['normal', 'known', 80, 0, 'greet', 'known', null],
    ['busy', 'unknown', 10, 1, 'greet', 'busy_delay', null],
    ['busy', 'unknown', 10, 2, 'refuse', 'busy_connections', 421],
    ['busy', 'known', 10, 40, 'greet', 'known', null],
    ['overload', 'unknown', 0, 0, 'refuse', 'overload', 421],
    ['overload', 'known', 0, 0, 'greet', 'known', null],
    ['overload', 'pinned', 95, 0, 'greet', 'known', null],
  ] as const)('%s, %s sender, %i open, %i from its network: %s (%s)', (level, standing, open, networkOpen, action, reason, code) => {
    const d = decideDoor(door({ level, standing, open, networkOpen }), config());
    expect(d.action).toBe(action);
    expect(d.reason).toBe(reason);
    if (d.action === 'refuse') expect(d.reply.code).toBe(code);
  });

  it('busy: the greeting waits busy.greetingDelay for unknown senders only', () => {
    const d = decideDoor(door({ level: 'busy' }), config({ busy: { greetingDelay: '4s' } }));
    expect(d).toMatchObject({ action: 'greet', delayMs: 4000 });
    expect(decideDoor(door({ level: 'busy', standing: 'known' }), config())).toMatchObject({ delayMs: 0 });
    expect(decideDoor(door({ level: 'normal' }), config())).toMatchObject({ delayMs: 0 });
  });

  it('overload with refuse: rcpt greets unknown senders and defers them at RCPT', () => {
    const c = config({ overload: { refuse: 'rcpt' } });
    const d = decideDoor(door({ level: 'overload' }), c);
    expect(d).toMatchObject({ action: 'greet', reason: 'overload_rcpt', deferRcpt: true });
    expect(decideRcpt({ level: 'overload', standing: 'unknown' }, c)?.reply?.code).toBe(451);
    expect(decideRcpt({ level: 'overload', standing: 'unknown' }, c)?.reply?.enhanced).toBe('4.7.1');
    // Once the level falls, a session greeted under overload is let through.
    expect(decideRcpt({ level: 'normal', standing: 'unknown' }, c)).toBeNull();
    expect(decideRcpt({ level: 'overload', standing: 'known' }, c)).toBeNull();
    // A session greeted before the overload began meets it at its next RCPT.
    expect(decideRcpt({ level: 'overload', standing: 'unknown' }, c)?.reason).toBe('overload');
  });

  it('overload with refuse: connect also defers, at their next RCPT, unknown senders greeted before it began (a flood\'s open connections send no more)', () => {
    const c = config();
    expect(decideDoor(door({ level: 'overload' }), c)).toMatchObject({ action: 'refuse', reason: 'overload' });
    expect(decideRcpt({ level: 'overload', standing: 'unknown' }, c)).toMatchObject({ reply: { code: 451, enhanced: '4.7.1' }, reason: 'overload' });
    expect(decideRcpt({ level: 'busy', standing: 'unknown' }, c)).toBeNull();
    expect(decideRcpt({ level: 'overload', standing: 'pinned' }, c)).toBeNull();
    expect(decideRcpt({ level: 'overload', standing: 'unknown' }, config({ mode: 'observe' }))).toEqual({ reply: null, reason: 'would_overload' });
  });

  it('observe: the decisions are counted as would_*, nobody is refused or delayed', () => {
    const c = config({ mode: 'observe' });
    expect(decideDoor(door({ level: 'overload' }), c)).toEqual({ action: 'greet', delayMs: 0, reason: 'would_overload', deferRcpt: false });
    expect(decideDoor(door({ level: 'busy' }), c)).toMatchObject({ action: 'greet', delayMs: 0, reason: 'would_busy_delay' });
    expect(decideDoor(door({ standing: 'blocked' }), c)).toMatchObject({ action: 'greet', reason: 'would_blocked' });
    expect(decideDoor(door({}), c)).toMatchObject({ reason: 'unknown' });
    expect(decideMail({ level: 'normal', standing: 'known', intake: 'paused', networkMails: 1 }, c)).toEqual({ reply: null, reason: 'would_intake_paused' });
  });

  it('off: everyone is greeted and nothing is refused later', () => {
    const c = config({ mode: 'off' });
    expect(decideDoor(door({ level: 'overload', standing: 'blocked', open: 99 }), c)).toMatchObject({ action: 'greet', reason: 'off' });
    expect(decideMail({ level: 'overload', standing: 'unknown', intake: 'paused', networkMails: 999 }, c)).toBeNull();
    expect(decideRcpt({ level: 'overload', standing: 'unknown' }, c)).toBeNull();
  });

  it('the reserve never takes every session', () => {
    expect(reservedSessions(1, 0.9)).toBe(0);
    expect(reservedSessions(100, 0.2)).toBe(20);
    expect(reservedSessions(10, 0.25)).toBe(3);
  });
});

describe('admission at MAIL FROM', () => {
  it.each([
    ['normal', 'unknown', 'open', 500, null],
    ['busy', 'unknown', 'open', 30, null],
    ['busy', 'unknown', 'open', 31, 'busy_rate'],
    ['overload', 'unknown', 'open', 31, 'busy_rate'],
    ['busy', 'known', 'open', 999, null],
    ['normal', 'known', 'paused', 1, 'intake_paused'],
    ['normal', 'pinned', 'paused', 1, 'intake_paused'],
  ] as const)('%s, %s sender, intake %s, %i mails a minute: %s', (level, standing, intake, networkMails, reason) => {
    const d = decideMail({ level, standing, intake, networkMails }, config());
    expect(d?.reason ?? null).toBe(reason);
    if (reason === 'busy_rate') expect(d?.reply).toMatchObject({ code: 450, enhanced: '4.7.1' });
    if (reason === 'intake_paused') expect(d?.reply).toMatchObject({ code: 452, enhanced: '4.3.1' });
  });
});
