import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  CLEAN_MAIL, closedPort, eicarMail, fakeContract, realContract, spooled, startFakeServer, timedScan,
  type ContractSubject, type FakeServer,
} from '../../test/helpers/engine-contract.js';
import { realDaemon } from '../../test/helpers/daemons.js';
import { fakeClamd } from '../../test/helpers/fake-clamd.js';
import { avFinding } from '../engine.js';
import { clamdOptions, createClamd } from './clamd.js';
import { parseScanReply } from './clamd-protocol.js';

const deps = { hostname: 'mx.ichidan.test', resolver: null, log: pino({ level: 'silent' }) };

const subject: ContractSubject = {
  name: 'clamd',
  fake: fakeClamd,
  make: (target, timeout) => createClamd(clamdOptions.parse({ name: 'clamav', type: 'clamd', servers: [{ host: target.host, port: target.port }], timeout }), deps),
  cleanMessage: CLEAN_MAIL,
  hitMessage: eicarMail(),
  expectHit(result) {
    expect(result.outcome.status, JSON.stringify(result)).toBe('infected');
    expect((result.outcome as { signature: string }).signature).toMatch(/Eicar/i);
  },
};

fakeContract(subject);

const clamd = realDaemon('clamd');
describe.skipIf(!clamd)('clamd (real daemon; skipped: scripts/engines.sh start has not run)', () => {
  realContract(subject, () => clamd!);

  describe('over its unix socket, and past its StreamMaxLength', () => {
    let dir: string;
    beforeAll(async () => { dir = await mkdtemp(join(tmpdir(), 'ichidan-clamd-')); });
    afterAll(async () => { await rm(dir, { recursive: true, force: true }); });

    it('finds EICAR over the unix socket', async () => {
      const engine = createClamd(clamdOptions.parse({ name: 'c', type: 'clamd', servers: [{ socket: clamd!.socket }] }), deps);
      const { result } = await timedScan(engine, await spooled(dir, 'e.eml', eicarMail()), 10_000);
      expect(result.outcome).toMatchObject({ status: 'infected' });
    });

    it('reports a message above clamd\'s own limit as too large, never clean', async () => {
      const engine = createClamd(clamdOptions.parse({ name: 'c', type: 'clamd', servers: [{ host: clamd!.host, port: clamd!.port }] }), deps);
      const big = Buffer.alloc(26 * 1024 * 1024, 'a');
      const { result } = await timedScan(engine, await spooled(dir, 'big.eml', big), 20_000);
      // clamd answers "INSTREAM size limit exceeded" and closes while the rest is still on its way;
      // the reset that the late bytes provoke can destroy that reply before it is read. Either way
      // the result must be a failure, never clean.
      expect(result.outcome.status).toBe('error');
      const o = result.outcome as { error: string; message: string };
      if (o.error !== 'too-large') expect(`${o.error}: ${o.message}`).toMatch(/^(protocol|io): .*(closed|reset|EPIPE)/i);
    });
  });
});

describe('clamd failover', () => {
  let fake: FakeServer;
  let dir: string;
  beforeAll(async () => {
    fake = await startFakeServer(fakeClamd);
    fake.behaviour = 'hit';
    dir = await mkdtemp(join(tmpdir(), 'ichidan-clamd-'));
  });
  afterAll(async () => {
    await fake.close();
    await rm(dir, { recursive: true, force: true });
  });

  it('skips a server that refuses and scans on the next, then prefers it', async () => {
    const dead = await closedPort();
    const engine = createClamd(clamdOptions.parse({
      name: 'c', type: 'clamd', servers: [{ host: '127.0.0.1', port: dead }, { host: fake.host, port: fake.port }], timeout: 2000,
    }), deps);
    const msg = await spooled(dir, 'e.eml', eicarMail());
    const first = await timedScan(engine, msg, 2000);
    expect(first.result.outcome).toMatchObject({ status: 'infected', signature: 'Eicar-Test-Signature' });
    expect(first.result.detail).toMatchObject({ server: `127.0.0.1:${fake.port}` });
    const before = fake.accepted;
    await timedScan(engine, msg, 2000);
    expect(fake.accepted).toBeGreaterThan(before);
    expect(await engine.ping!(AbortSignal.timeout(1000))).toBe(true);
    expect(engine.version()).toMatch(/^ClamAV 9\.9\.9/);
  });

  it('reports refused when every server refuses', async () => {
    const engine = createClamd(clamdOptions.parse({
      name: 'c', type: 'clamd', servers: [{ host: '127.0.0.1', port: await closedPort() }, { socket: join(dir, 'none.sock') }],
    }), deps);
    const { result } = await timedScan(engine, await spooled(dir, 'c.eml', CLEAN_MAIL), 2000);
    expect(result.outcome).toMatchObject({ status: 'error', error: 'refused' });
  });
});

describe('clamd reply parsing', () => {
  it.each([
    ['stream: OK', { kind: 'clean' }],
    ['stream: Eicar-Test-Signature FOUND', { kind: 'found', signature: 'Eicar-Test-Signature' }],
    ['stream: Win.Test.EICAR_HDB-1 FOUND\n', { kind: 'found', signature: 'Win.Test.EICAR_HDB-1' }],
    ['1: stream: OK', { kind: 'clean' }],
    ['INSTREAM size limit exceeded. ERROR', { kind: 'size-limit' }],
    ['stream: Can\'t allocate memory ERROR', { kind: 'error' }],
    ['stream: ', { kind: 'garbled' }],
    ['PONG', { kind: 'garbled' }],
    ['', { kind: 'garbled' }],
  ])('%j', (line, expected) => {
    expect(parseScanReply(line)).toMatchObject(expected);
  });
});

describe('AV findings', () => {
  it.each([
    ['Heuristics.Limits.Exceeded.MaxRecursion', { status: 'unscannable', reason: 'limit of the scanner exceeded (Heuristics.Limits.Exceeded.MaxRecursion)' }],
    ['Heuristics.Limits.Exceeded.MaxScanSize', { status: 'unscannable', reason: 'limit of the scanner exceeded (Heuristics.Limits.Exceeded.MaxScanSize)' }],
    ['Eicar-Test-Signature', { status: 'infected', signature: 'Eicar-Test-Signature' }],
    ['Heuristics.Encrypted.Zip', { status: 'infected', signature: 'Heuristics.Encrypted.Zip' }],
    ['Heuristics.Zip.OverlappingFiles', { status: 'infected', signature: 'Heuristics.Zip.OverlappingFiles' }],
  ])('%s', (signature, outcome) => {
    expect(avFinding(signature).outcome).toEqual(outcome);
  });
});
