// The accept step on its own: each verdict in each mode gives one result, refused mail leaves
// nothing in the spool, every scan is recorded, and the snapshot's uses are given back.
import { createPublicKey, generateKeyPairSync } from 'node:crypto';
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import pino from 'pino';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { newQueueId } from '../../base/base-queue-id.js';
import type { EngineSet, ScanDecision } from '../../engines/index.js';
import type { RunRecord, ScanRecord } from '../../engines/engines-records.js';
import type { VerdictAction } from '../../engines/engines-verdict.js';
import { reply, type SmtpReply } from '../../base/base-reply.js';
import type { AcceptedEnvelope } from '../index.js';
import { Spool, type SpoolWriter } from '../queue-spool.js';
import { acceptMessage, type AcceptInput, type AcceptResult } from './accept-step.js';
import { ScanSlots } from './accept-slots.js';
import type { DkimKey, DkimSigning } from './accept-dkim-keys.js';

const log = pino({ level: 'silent' });
const MESSAGE = 'Subject: hello\r\n\r\nbody\r\n';
const REFUSALS: Partial<Record<VerdictAction, SmtpReply>> = {
  reject: reply(550, '5.7.1', 'message refused: virus found (Test.Virus)'),
  tempfail: reply(451, '4.7.1', 'message could not be scanned now, try again later'),
};

function decision(action: VerdictAction, late: Promise<never[]> | null = null): ScanDecision {
  return {
    verdict: { action, reason: `${action} by test`, headers: ['X-Test: judged'], spamScore: null, unscanned: [], subjectTag: null },
    reply: REFUSALS[action] ?? null, runs: [], late, ms: 1, overheadMs: 0,
  };
}

function engines(next: () => ScanDecision, size = 1): EngineSet {
  return { size, names: size ? ['test'] : [], scan: async () => next(), release: () => undefined };
}

let dir: string;
let spool: Spool;
let uses: number;
let accepted: Array<{ env: AcceptedEnvelope; scan?: ScanRecord }>;
let scans: ScanRecord[];
let lateRuns: RunRecord[][];
let low: boolean;

const queue = {
  lowOnSpace: () => low,
  createWriter: () => spool.createWriter(newQueueId()),
  accept: async (writer: SpoolWriter, env: AcceptedEnvelope, bytes: number, scan?: ScanRecord) => {
    await writer.commit(bytes);
    accepted.push({ env, scan });
    return writer.id;
  },
  recordScan: (scan: ScanRecord) => { scans.push(scan); },
  recordLateRuns: (_scan: ScanRecord, runs: RunRecord[]) => { lateRuns.push(runs); },
};

function input(mode: AcceptInput['mode'], set: EngineSet, data: string | Readable = MESSAGE, limits: Partial<AcceptInput['limits']> = {}): AcceptInput {
  return {
    mode,
    stream: typeof data === 'string' ? Readable.from([Buffer.from(data)]) : data,
    envelope: {
      sender: 's@x.test', recipients: [{ tenant: 't', address: 'r@y.test', domain: 'y.test', orcpt: null, notify: null }],
      ret: null, envid: null, smtputf8: false, body8bit: false, client: '192.0.2.1', helo: 'h.test', authUser: null, listener: 'mx',
    },
    clientName: null,
    snapshot: { generation: 7, engines: set, retain: () => { uses++; }, release: () => { uses--; } },
    limits: { maxMessageSize: 1000, dataTimeout: 5_000, maxHeaderSize: 1000, maxHeaderFields: 100, maxMimeDepth: 5, maxMimeParts: 50, allowNul: false, ...limits },
    hostname: 'mx.ichidan.test',
    trace: (id) => `Received: from h.test by mx.ichidan.test with ESMTP id ${id}\r\n`,
  };
}

const spooled = async () => (await readdir(dir)).filter((f) => f !== 'corrupt');

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'ichidan-accept-'));
  spool = new Spool(dir, false);
  await spool.init();
  uses = 0;
  accepted = [];
  scans = [];
  lateRuns = [];
  low = false;
});

afterEach(async () => {
  // Every use the step took of the snapshot was given back.
  expect(uses).toBe(0);
  await spool.close();
  await rm(dir, { recursive: true, force: true });
});

describe('the verdict, in each mode', () => {
  it.each([
    ['queue', 'accept', 'queued', /^250 2\.0\.0 Ok: queued as /],
    ['queue', 'tag', 'queued', /^250 2\.0\.0 Ok: queued as /],
    ['queue', 'quarantine', 'queued', /^250 2\.0\.0 Ok: queued as /],
    ['queue', 'reject', 'refused', /^550 5\.7\.1 message refused: virus found/],
    ['queue', 'tempfail', 'refused', /^451 4\.7\.1 /],
    ['relay', 'accept', 'relay', null],
    ['relay', 'tag', 'relay', null],
    ['relay', 'quarantine', 'queued', /^250 2\.0\.0 Ok: held in quarantine as /],
    ['relay', 'reject', 'refused', /^550 5\.7\.1 /],
    ['relay', 'tempfail', 'refused', /^451 4\.7\.1 /],
  ] as const)('%s mode, %s: %s', async (mode, action, kind, replyText) => {
    const result = await acceptMessage(input(mode, engines(() => decision(action))), queue, log);
    expect(result.kind).toBe(kind);
    if (result.kind !== 'relay') expect(`${result.reply.code} ${result.reply.enhanced} ${result.reply.text}`).toMatch(replyText!);
    // Every scan is recorded once: with the queued message, or on its own.
    expect(scans.length + accepted.filter((a) => a.scan).length).toBe(1);
    if (kind === 'refused') expect(await spooled()).toEqual([]);
    if (result.kind === 'queued') {
      const { env } = accepted[0];
      expect(result.quarantined).toBe(action === 'quarantine');
      expect(env.quarantine).toBe(action === 'quarantine' ? 'quarantine by test' : null);
      // The caller's trace field, then the verdict's; relay mode queues no strip rule.
      if (mode === 'queue') {
        expect(env.trace).toMatch(/^Received: .* id [0-9A-Z]+\r\nX-Test: judged\r\n$/);
        expect(env.strip).toContain('x-test');
      } else {
        expect(env.trace).toBe('Received: from h.test by mx.ichidan.test with ESMTP id ' + result.queueId + '\r\nX-Test: judged\r\n');
        expect(env.strip).toBeNull();
      }
    }
    if (result.kind === 'relay') {
      expect(result.message).toMatchObject({ headers: 'X-Test: judged\r\n', bytes: MESSAGE.length });
      expect(result.message.kept?.toString()).toBe(MESSAGE);
      expect(await spooled()).toHaveLength(1);
      await result.message.done();
      expect(await spooled()).toEqual([]);
    }
  });

  it('hands back what the engines made of the message, for the known senders to learn from', async () => {
    const scored = (action: VerdictAction): ScanDecision => ({ ...decision(action), verdict: { ...decision(action).verdict, spamScore: 0.7 } });
    const queued = await acceptMessage(input('queue', engines(() => scored('tag'))), queue, log);
    expect(queued).toMatchObject({ kind: 'queued', scan: { spamScore: 0.7, record: { action: 'tag', queueId: (queued as { queueId: string }).queueId } } });
    const refused = await acceptMessage(input('queue', engines(() => scored('reject'))), queue, log);
    expect(refused).toMatchObject({ kind: 'refused', scan: { spamScore: 0.7, record: { action: 'reject' } } });
    const unscanned = await acceptMessage(input('queue', engines(() => { throw new Error('not scanned'); }, 0)), queue, log);
    expect(unscanned).not.toHaveProperty('scan');
  });

  it('queues without a scan when there are no engines and the structure is within the limits', async () => {
    const result = await acceptMessage(input('queue', engines(() => { throw new Error('not scanned'); }, 0)), queue, log);
    expect(result).toMatchObject({ kind: 'queued', quarantined: false });
    expect(accepted[0].scan).toBeUndefined();
    expect(accepted[0].env.strip).toBeNull();
  });

  it('adds a shadow engine\'s late runs once the message\'s own record is written, holding the snapshot until then', async () => {
    let finish!: (runs: never[]) => void;
    const late = new Promise<never[]>((resolve) => { finish = resolve; });
    const result = await acceptMessage(input('queue', engines(() => decision('accept', late))), queue, log);
    expect(result.kind).toBe('queued');
    expect(uses).toBe(1);
    finish([]);
    await new Promise((r) => setTimeout(r, 10));
    expect(lateRuns).toEqual([[]]);
    expect(uses).toBe(0);
  });

  it('asks the admission again once a scan slot is free: a message the level rose over while it waited is deferred, not scanned', async () => {
    const slots = new ScanSlots(1, 0);
    const held = await slots.take('known');
    let looks = 0;
    let overloaded = false;
    const deferral = reply(451, '4.7.1', 'busy, try again later');
    const msg = input('queue', engines(() => { throw new Error('not scanned'); }));
    msg.scanSlot = { slots, priority: 'unknown', deferred: () => { looks++; return overloaded ? deferral : null; } };
    const result = acceptMessage(msg, queue, log);
    await vi.waitFor(() => expect(slots.waiting.unknown).toBe(1));
    overloaded = true;
    held(false);
    expect(await result).toEqual({ kind: 'refused', reply: deferral });
    expect(looks).toBe(2);
    // The slot was given back as unscanned: the engines' speed learned nothing from it.
    expect(slots.inUse).toBe(0);
    expect(slots.status().unknown.quickestMs).toBeNull();
    expect(await spooled()).toEqual([]);
    expect(accepted).toEqual([]);
  });

  it('answers 451 4.3.0 and keeps nothing when the engines fail unexpectedly', async () => {
    const result = await acceptMessage(input('relay', engines(() => { throw new Error('bug'); })), queue, log);
    expect(result).toMatchObject({ kind: 'refused', reply: { code: 451, enhanced: '4.3.0' } });
    expect(await spooled()).toEqual([]);
  });
});

describe('the guards, before any engine', () => {
  const never = engines(() => { throw new Error('not scanned'); });
  it.each([
    ['too big', 'queue', 'Subject: x\r\n\r\n' + 'y'.repeat(2000) + '\r\n', 552, '5.3.4'],
    ['bare LF', 'queue', 'Subject: x\r\n\r\nline\nline\r\n', 550, '5.6.0'],
    ['bare CR', 'relay', 'Subject: x\r\n\r\nline\rline\r\n', 550, '5.6.0'],
    ['NUL', 'queue', 'Subject: x\r\n\r\nli\0ne\r\n', 550, '5.6.0'],
  ] as const)('%s (%s mode): %i %s, nothing kept', async (_name, mode, data, code, enhanced) => {
    const result = await acceptMessage(input(mode, never, data), queue, log);
    expect(result).toMatchObject({ kind: 'refused', reply: { code, enhanced } });
    expect(await spooled()).toEqual([]);
  });

  it('lets NUL through in relay mode, as the unscanned relay does', async () => {
    const result = await acceptMessage(input('relay', engines(() => decision('accept')), 'Subject: x\r\n\r\nli\0ne\r\n'), queue, log);
    expect(result.kind).toBe('relay');
    if (result.kind === 'relay') await result.message.done();
  });

  it('refuses with 452 4.3.1 while the queue is low on space', async () => {
    low = true;
    const result: AcceptResult = await acceptMessage(input('queue', never), queue, log);
    expect(result).toMatchObject({ kind: 'refused', reply: { code: 452, enhanced: '4.3.1' } });
  });

  it('gives back the error of data that broke off, and keeps nothing', async () => {
    const broken = new Readable({ read() { this.push(Buffer.from('Subject: x\r\n')); this.destroy(new Error('client gone')); } });
    let ended = false;
    const result = await acceptMessage({ ...input('relay', never, broken), receiving: () => () => { ended = true; } }, queue, log);
    expect(result).toMatchObject({ kind: 'incomplete', reply: { code: 421, enhanced: '4.4.2' }, error: { message: 'client gone' } });
    expect(ended).toBe(true);
    expect(await spooled()).toEqual([]);
  });
});

describe('DKIM signing at the end of DATA', () => {
  const { privateKey } = generateKeyPairSync('ed25519');
  const key = (over: Partial<DkimKey> = {}): DkimKey => ({
    tenant: 't', domain: 'x.test', selector: 's1', algorithm: 'ed25519-sha256', headers: ['From', 'Subject'], oversign: [], expireMs: null, privateKey, ...over,
  });
  const SIGNED = 'From: s@x.test\r\nSubject: hello\r\n\r\nbody\r\n';
  function signing(keys: DkimKey[]) {
    const counted: string[] = [];
    const dkim: DkimSigning = { keys: (d) => (d === 'x.test' ? keys : []), count: (k, result) => { counted.push(`${k?.selector ?? '-'}:${result}`); } };
    return { dkim, counted };
  }

  it('puts the signature in front of the trace fields and leaves the spool file as received', async () => {
    const { dkim, counted } = signing([key()]);
    const result = await acceptMessage({ ...input('queue', engines(() => decision('accept'), 0), SIGNED), dkim }, queue, log);
    expect(result.kind).toBe('queued');
    if (result.kind !== 'queued') return;
    expect(accepted[0].env.trace).toMatch(/^DKIM-Signature: .*\r\nReceived: /s);
    expect(await readFile(spool.path(result.queueId), 'utf8')).toBe(SIGNED);
    expect(counted).toEqual(['s1:signed']);
  });

  it('refuses with 451 4.7.5 and keeps nothing when no key can sign; counts the failure', async () => {
    const { dkim, counted } = signing([key({ privateKey: createPublicKey(privateKey) })]);
    const result = await acceptMessage({ ...input('queue', engines(() => decision('accept'), 0), SIGNED), dkim }, queue, log);
    expect(result).toMatchObject({ kind: 'refused', reply: { code: 451, enhanced: '4.7.5' } });
    expect(accepted).toEqual([]);
    expect(await spooled()).toEqual([]);
    expect(counted).toEqual(['s1:failed']);
  });

  it('queues with the signatures that could be made when one key of a rotation fails', async () => {
    const { dkim, counted } = signing([key({ privateKey: createPublicKey(privateKey) }), key({ selector: 's2' })]);
    const result = await acceptMessage({ ...input('queue', engines(() => decision('accept'), 0), SIGNED), dkim }, queue, log);
    expect(result.kind).toBe('queued');
    expect(accepted[0].env.trace.match(/^DKIM-Signature:/gm)).toHaveLength(1);
    expect(accepted[0].env.trace).toContain('s=s2');
    expect(counted).toEqual(['s1:failed', 's2:signed']);
  });

  it('does not sign a cluster transfer (signed where first accepted) nor relay-mode mail, nor mail From: a domain without keys', async () => {
    const { dkim, counted } = signing([key()]);
    await acceptMessage({ ...input('queue', engines(() => decision('accept'), 0), SIGNED), dkim, transfer: {} }, queue, log);
    await acceptMessage({ ...input('queue', engines(() => decision('accept'), 0), SIGNED.replace('s@x.test', 's@y.test')), dkim }, queue, log);
    expect(accepted.map((a) => a.env.trace.startsWith('DKIM-Signature'))).toEqual([false, false]);
    const relayed = await acceptMessage({ ...input('relay', engines(() => decision('accept')), SIGNED), dkim }, queue, log);
    expect(relayed.kind).toBe('relay');
    if (relayed.kind === 'relay') {
      expect(relayed.message.headers).not.toContain('DKIM-Signature');
      await relayed.message.done();
    }
    expect(counted).toEqual([]);
  });
});
