// The known senders on one node: keys, decay, the standing rules, maxEntries, forgetAfter, forget,
// and what survives a reopen of the SQLite file.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { parseConfig } from '../mta-config.js';
import type { SendersConfig } from './admission-config.js';
import { parseSenderKey } from './admission-senders-key.js';
import { decayed, emptyTally, merged, standingFrom, counted } from './admission-senders-tally.js';
import { KnownSenders, type SenderEvent } from './admission-senders.js';

const log = pino({ level: 'silent' });
const DAY = 86_400_000;
const T0 = Date.parse('2026-01-01T00:00:00Z');
const senders = (s: Record<string, unknown> = {}): SendersConfig => parseConfig({ admission: { senders: s } }).admission.senders;
const clean = (address: string, extra: Partial<SenderEvent> = {}): SenderEvent => ({ address, authUser: null, domain: null, outcome: 'clean', score: null, ...extra });

describe('sender keys', () => {
  const prefixes = { ipv4Prefix: 24, ipv6Prefix: 64 };
  const cases: Array<[string, unknown]> = [
    ['192.0.2.7', { kind: 'network', key: '192.0.2.0/24' }],
    ['192.0.2.0/24', { kind: 'network', key: '192.0.2.0/24' }],
    ['network:192.0.2.200', { kind: 'network', key: '192.0.2.0/24' }],
    ['::ffff:192.0.2.9', { kind: 'network', key: '192.0.2.0/24' }],
    ['2001:db8:1:2::77', { kind: 'network', key: '2001:db8:1:2:0:0:0:0/64' }],
    ['2001:db8:1:2::/64', { kind: 'network', key: '2001:db8:1:2:0:0:0:0/64' }],
    ['user:alice@example.com', { kind: 'user', key: 'alice@example.com' }],
    ['domain:Example.COM.', { kind: 'domain', key: 'example.com' }],
    ['resolver:198.51.100.53', { kind: 'resolver', key: '198.51.100.53' }],
    ['resolver:2001:db8::53', { kind: 'resolver', key: '2001:db8:0:0:0:0:0:53' }],
  ];
  it.each(cases)('%s', (text, want) => {
    expect(parseSenderKey(text, prefixes)).toEqual(want);
  });

  const bad: Array<[string, RegExp]> = [
    ['mail.example.com', /not a sender key: use an address or network/],
    ['192.0.2.0/16', /kept per \/24 \(admission.senders.ipv4Prefix\)/],
    ['2001:db8::/48', /kept per \/64 \(admission.senders.ipv6Prefix\)/],
    ['user:', /user name/],
    ['domain:not a domain', /not a domain name/],
    ['resolver:ns.example', /not an IP address/],
    ['999.0.0.1', /not a sender key/],
  ];
  it.each(bad)('refuses %s', (text, message) => {
    const got = parseSenderKey(text, prefixes);
    expect('error' in got && got.error).toMatch(message);
  });

  it('follows the configured prefixes', () => {
    expect(parseSenderKey('192.0.2.7', { ipv4Prefix: 32, ipv6Prefix: 48 })).toEqual({ kind: 'network', key: '192.0.2.7' });
    expect(parseSenderKey('10.1.2.3', { ipv4Prefix: 16, ipv6Prefix: 64 })).toEqual({ kind: 'network', key: '10.1.0.0/16' });
    expect(parseSenderKey('2001:db8:1:2::1', { ipv4Prefix: 24, ipv6Prefix: 48 })).toEqual({ kind: 'network', key: '2001:db8:1:0:0:0:0:0/48' });
  });
});

describe('tallies', () => {
  const halfLife = 14 * DAY;
  it('halve every halfLife', () => {
    const t = { ...emptyTally(T0), clean: 8, refused: 2, scoreSum: 4, scored: 2 };
    const later = decayed(t, T0 + 2 * halfLife, halfLife);
    expect(later.clean).toBeCloseTo(2);
    expect(later.refused).toBeCloseTo(0.5);
    expect(later.scoreSum / later.scored).toBeCloseTo(2);
    expect(later.firstSeen).toBe(T0);
  });

  it('add up several nodes brought to one time, each counted once', () => {
    const a = counted(emptyTally(T0), 'clean', null, T0, halfLife);
    const b = { ...counted(emptyTally(T0 - halfLife), 'spam', 5, T0 - halfLife, halfLife), firstSeen: T0 - halfLife };
    const sum = merged([a, b], T0, halfLife)!;
    expect(sum.clean).toBeCloseTo(1);
    expect(sum.spam).toBeCloseTo(0.5);
    expect(sum.firstSeen).toBe(T0 - halfLife);
    expect(sum.lastSeen).toBe(T0);
    expect(merged([], T0, halfLife)).toBeNull();
  });

  const rules = { minClean: 3, maxBadShare: 0.2 };
  const of = (clean: number, bad: number) => ({ ...emptyTally(T0), clean, refused: bad });
  const cases: Array<[string, Parameters<typeof standingFrom>[0], ReturnType<typeof of> | null, string]> = [
    ['blocked by an operator, whatever the counts', { flag: 'blocked', note: null, at: 0, by: 'op' }, of(100, 0), 'blocked'],
    ['pinned by an operator, never seen', { flag: 'pinned', note: null, at: 0, by: 'op' }, null, 'pinned'],
    ['no entry', null, null, 'unknown'],
    ['enough clean, no bad', null, of(3, 0), 'known'],
    ['not enough clean', null, of(2.99, 0), 'unknown'],
    ['bad share at the limit', null, of(8, 2), 'known'],
    ['bad share past the limit', null, of(8, 2.1), 'unknown'],
  ];
  it.each(cases)('standing: %s', (_what, mark, tally, want) => {
    expect(standingFrom(mark, tally, rules)).toBe(want);
  });
});

describe('KnownSenders', () => {
  let dir: string;
  const open = (config: SendersConfig = senders(), trusted = (a: string) => a === '203.0.113.1') =>
    KnownSenders.open({ dataDir: dir, config, trusted, link: null, log });

  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'ichidan-senders-'));
    vi.useFakeTimers({ toFake: ['Date'] });
    vi.setSystemTime(T0);
  });
  afterEach(() => {
    vi.useRealTimers();
    rmSync(dir, { recursive: true, force: true });
  });

  it('learns a network, a user and a domain; trusted networks are pinned', async () => {
    const s = open();
    expect(s.standing('192.0.2.7')).toBe('unknown');
    for (let i = 0; i < 3; i++) s.record(clean('192.0.2.7', { authUser: 'alice', domain: 'Example.com', score: 0.1 }));
    expect(s.standing('192.0.2.99')).toBe('known');
    expect(s.standing('192.0.3.1')).toBe('unknown');
    expect(s.standingOf('user', 'alice')).toBe('known');
    expect(s.standingOf('domain', 'example.com')).toBe('known');
    expect(s.standingOf('network', '192.0.2.0/24')).toBe('known');
    expect(s.standing('203.0.113.1')).toBe('pinned');
    expect(s.show({ kind: 'network', key: '192.0.2.0/24' })).toMatchObject({ key: '192.0.2.0/24', clean: 3, refused: 0, spam: 0, score: 0.1, firstSeen: T0, lastSeen: T0, nodes: 1 });
    expect(s.counts().filter((c) => c.n > 0)).toEqual([
      { kind: 'network', standing: 'known', n: 1 }, { kind: 'user', standing: 'known', n: 1 }, { kind: 'domain', standing: 'known', n: 1 },
    ]);
    await s.close();
  });

  it('lets a sender fade to unknown, and spam or refusals keep it unknown', async () => {
    const s = open(senders({ halfLife: '1d', minClean: 3 }));
    for (let i = 0; i < 4; i++) s.record(clean('192.0.2.7'));
    expect(s.standing('192.0.2.7')).toBe('known');
    vi.setSystemTime(T0 + DAY);
    expect(s.standing('192.0.2.7')).toBe('unknown');
    for (let i = 0; i < 10; i++) s.record(clean('198.51.100.1'));
    for (let i = 0; i < 3; i++) s.record(clean('198.51.100.1', { outcome: i === 0 ? 'refused' : 'spam', score: 9 }));
    expect(s.standing('198.51.100.1')).toBe('unknown');
    expect(s.show({ kind: 'network', key: '198.51.100.0/24' })).toMatchObject({ clean: 10, refused: 1, spam: 2, score: 9 });
    expect(s.list({ standing: 'unknown' }).total).toBe(2);
    await s.flush();
    // The metric's counts follow decay without being asked per entry: the flush judged the slice again.
    expect(s.counts().find((c) => c.kind === 'network' && c.standing === 'known')!.n).toBe(0);
    await s.close();
  });

  it('pins, blocks and forgets', async () => {
    const s = open();
    for (let i = 0; i < 5; i++) s.record(clean('192.0.2.7'));
    await s.mark({ kind: 'network', key: '192.0.2.0/24' }, 'blocked', 'abuse desk ticket 7', 'op');
    expect(s.standing('192.0.2.7')).toBe('blocked');
    const pinned = await s.mark({ kind: 'network', key: '198.51.100.0/24' }, 'pinned', null, 'op');
    expect(pinned.view).toMatchObject({ standing: 'pinned', clean: 0, lastSeen: null, mark: { flag: 'pinned', by: 'op' } });
    expect(s.standing('198.51.100.20')).toBe('pinned');
    expect(await s.forget({ kind: 'network', key: '192.0.2.0/24' }, 'op')).toMatchObject({ view: { standing: 'blocked', clean: 5 }, shared: false });
    expect(s.standing('192.0.2.7')).toBe('unknown');
    expect(s.show({ kind: 'network', key: '192.0.2.0/24' })).toBeNull();
    expect(await s.forget({ kind: 'user', key: 'nobody' }, 'op')).toBeNull();
    await s.close();
  });

  it('keeps at most maxEntries, dropping the least recently seen unmarked one', async () => {
    const s = open(senders({ maxEntries: 3 }));
    await s.mark({ kind: 'network', key: '10.0.0.0/24' }, 'pinned', null, 'op');
    s.record(clean('10.0.1.1'));
    vi.setSystemTime(T0 + 1000);
    s.record(clean('10.0.2.1'));
    vi.setSystemTime(T0 + 2000);
    s.record(clean('10.0.1.1'));
    s.record(clean('10.0.3.1'));
    expect(s.size).toBe(3);
    expect(s.list().senders.map((v) => v.key).sort()).toEqual(['10.0.0.0/24', '10.0.1.0/24', '10.0.3.0/24']);
    await s.close();
  });

  it('forgets entries not seen for forgetAfter, but not marked ones', async () => {
    const s = open(senders({ forgetAfter: '10d' }));
    s.record(clean('10.0.1.1'));
    await s.mark({ kind: 'network', key: '10.0.2.0/24' }, 'blocked', null, 'op');
    vi.setSystemTime(T0 + 9 * DAY);
    s.record(clean('10.0.3.1'));
    vi.setSystemTime(T0 + 11 * DAY);
    await s.flush();
    expect(s.list().senders.map((v) => v.key).sort()).toEqual(['10.0.2.0/24', '10.0.3.0/24']);
    await s.close();
  });

  it('keeps everything across a reopen of its SQLite file', async () => {
    const s = open();
    for (let i = 0; i < 3; i++) s.record(clean('192.0.2.7', { authUser: 'bob', score: 2 }));
    s.record(clean('2001:db8:1:2::5', { outcome: 'spam' }));
    await s.mark({ kind: 'domain', key: 'example.org' }, 'pinned', 'partner', 'op');
    s.pairResolver('198.51.100.53', '192.0.2.7');
    const before = s.list({ limit: 100 });
    await s.close();
    const again = open();
    expect(again.list({ limit: 100 })).toEqual(before);
    expect(again.standing('192.0.2.1')).toBe('known');
    expect(again.resolverStanding('198.51.100.53')).toBe('known');
    await again.forget({ kind: 'user', key: 'bob' }, 'op');
    await again.close();
    const third = open();
    expect(third.show({ kind: 'user', key: 'bob' })).toBeNull();
    expect(third.size).toBe(before.total - 1);
    await third.close();
  });

  it('knows a resolver by the clients it was paired with', async () => {
    const s = open();
    s.pairResolver('198.51.100.53', '192.0.2.7');
    expect(s.resolverStanding('198.51.100.53')).toBe('unknown');
    for (let i = 0; i < 3; i++) s.record(clean('192.0.2.7'));
    expect(s.resolverStanding('198.51.100.53')).toBe('known');
    s.pairResolver('198.51.100.54', '203.0.113.1');
    expect(s.resolverStanding('198.51.100.54')).toBe('known');
    expect(s.resolverStanding('203.0.113.1')).toBe('pinned');
    await s.mark({ kind: 'resolver', key: '198.51.100.53' }, 'blocked', null, 'op');
    expect(s.standingOf('resolver', '198.51.100.53')).toBe('blocked');
    await s.close();
  });

  it('judges by the settings in force after a reload', async () => {
    const s = open(senders({ minClean: 3 }));
    for (let i = 0; i < 2; i++) s.record(clean('192.0.2.7'));
    expect(s.standing('192.0.2.7')).toBe('unknown');
    s.apply(senders({ minClean: 2 }));
    expect(s.standing('192.0.2.7')).toBe('known');
    s.apply(senders({ minClean: 2, maxEntries: 1 }));
    s.record(clean('198.51.100.1'));
    expect(s.size).toBe(1);
    expect(s.standing('192.0.2.7')).toBe('unknown');
    await s.close();
  });
});
