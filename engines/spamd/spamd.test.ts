import { createReadStream } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  CLEAN_MAIL, CONTEXT, closedPort, fakeContract, gtubeMail, realContract, spooled, startFakeServer, timedScan,
  type ContractSubject, type FakeServer, type FaultBehaviour,
} from '../../test/helpers/engine-contract.js';
import { SKIP_REASON, realDaemon } from '../../test/helpers/daemons.js';
import { createSpamd, spamdOptions } from './spamd.js';
import { checkerVersion, parseReply, parseSpamHeader, parseStatusLine, parseSymbols, requestHead } from './spamd-protocol.js';

const deps = { hostname: 'mx.ichidan.test', resolver: null, log: pino({ level: 'silent' }) };

interface SpamdRequest {
  command: string;
  headers: Map<string, string>;
  body: Buffer;
}

/**
 * Reads one SPAMC request (head, then exactly Content-length bytes), records it, then answers as
 * `behaviour` says. PING and the HEADERS version probe are answered the way spamd does.
 */
function fakeSpamd(seen: SpamdRequest[] = []) {
  return (socket: Socket, behaviour: FaultBehaviour): void => {
    let buf = Buffer.alloc(0);
    let request: SpamdRequest | null = null;
    let length = 0;
    socket.on('data', (data: Buffer) => {
      buf = Buffer.concat([buf, data]);
      if (!request) {
        const end = buf.indexOf('\r\n\r\n');
        if (end < 0) return;
        const [first, ...lines] = buf.subarray(0, end).toString('latin1').split('\r\n');
        const headers = new Map(lines.map((l) => [l.slice(0, l.indexOf(':')).toLowerCase(), l.slice(l.indexOf(':') + 1).trim()]));
        request = { command: first.split(' ')[0], headers, body: Buffer.alloc(0) };
        length = Number(headers.get('content-length') ?? 0);
        buf = buf.subarray(end + 4);
        if (request.command === 'PING') return void socket.end('SPAMD/1.5 0 PONG\r\n');
      }
      if (buf.length < length) return;
      request.body = buf.subarray(0, length);
      seen.push(request);
      answer(socket, behaviour, request.command);
    });
  };
}

function answer(socket: Socket, behaviour: FaultBehaviour, command: string): void {
  if (command === 'HEADERS') {
    const body = 'Subject: version probe\r\nX-Spam-Checker-Version: SpamAssassin 9.9.9 (2026-01-01) on fake\r\n\r\n';
    return void socket.end(`SPAMD/1.1 0 EX_OK\r\nContent-length: ${body.length}\r\nSpam: False ; 1.2 / 5.0\r\n\r\n${body}`);
  }
  const withBody = (spam: string, symbols: string) => command === 'SYMBOLS'
    ? `SPAMD/1.1 0 EX_OK\r\nContent-length: ${symbols.length}\r\nSpam: ${spam}\r\n\r\n${symbols}`
    : `SPAMD/1.1 0 EX_OK\r\nSpam: ${spam}\r\n\r\n`;
  switch (behaviour) {
    case 'clean': return void socket.end(withBody('False ; 1.2 / 5.0', 'MISSING_MID,NO_RELAYS'));
    case 'hit': return void socket.end(withBody('True ; 1000.0 / 5.0', 'GTUBE,NO_RECEIVED,NO_RELAYS'));
    case 'hang': return;
    case 'garbage': return void socket.end(Buffer.from([0x16, 0x03, 0x01, 0x00, 0xa5, 0x01, 0xff, 0x0d, 0x0a, 0x42]));
    case 'close-mid-reply': return void socket.end('SPAMD/1.1 0 EX_OK\r\nSpam: Tr');
    case 'too-large': return void socket.end('SPAMD/1.0 866 Message too big\r\n');
  }
}

const subject: ContractSubject = {
  name: 'spamd',
  fake: fakeSpamd(),
  make: (target, timeout) => createSpamd(spamdOptions.parse({ name: 'spamassassin', type: 'spamd', servers: [target], timeout }), deps),
  cleanMessage: CLEAN_MAIL,
  hitMessage: gtubeMail(),
  expectHit(result) {
    expect(result.outcome.status, JSON.stringify(result)).toBe('spam');
    const score = (result.outcome as { score: { score: number; threshold: number; symbols: string[] } }).score;
    expect(score.score).toBeGreaterThanOrEqual(score.threshold);
    expect(score.symbols).toContain('GTUBE');
  },
};

fakeContract(subject);

const daemon = realDaemon('spamd');
describe.skipIf(!daemon)(`spamd real daemon (${SKIP_REASON})`, () => {
  realContract(subject, () => daemon!);
});

describe('spamd request head', () => {
  it('states the exact size and the user', () => {
    expect(requestHead('SYMBOLS', 1234, 'alice')).toBe('SYMBOLS SPAMC/1.5\r\nContent-length: 1234\r\nUser: alice\r\n\r\n');
    expect(requestHead('CHECK', 0)).toBe('CHECK SPAMC/1.5\r\nContent-length: 0\r\n\r\n');
  });
  it('refuses a user name that could inject header lines', () => {
    expect(() => spamdOptions.parse({ name: 's', type: 'spamd', user: 'a\r\nContent-length: 1' })).toThrow();
  });
});

describe('spamd reply parsers', () => {
  it.each([
    ['True ; 1000.0 / 5.0', { spam: true, score: 1000, threshold: 5 }],
    ['False ; 1.2 / 5.0', { spam: false, score: 1.2, threshold: 5 }],
    ['False ; -2.5 / 5.0', { spam: false, score: -2.5, threshold: 5 }],
    ['True ; 6.1 / -1.0', { spam: true, score: 6.1, threshold: -1 }],
    ['  true;7/5  ', { spam: true, score: 7, threshold: 5 }],
    ['Yes ; 12.0 / 5.0', { spam: true, score: 12, threshold: 5 }],
    ['No ; .5 / 5.', { spam: false, score: 0.5, threshold: 5 }],
    ['Maybe ; 1.0 / 5.0', null],
    ['True ; 1.0', null],
    ['True ; / 5.0', null],
    ['True 1.0 / 5.0', null],
    ['', null],
  ])('Spam header %j', (value, expected) => {
    expect(parseSpamHeader(value)).toEqual(expected);
  });

  it.each([
    ['GTUBE,NO_RECEIVED,NO_RELAYS', ['GTUBE', 'NO_RECEIVED', 'NO_RELAYS']],
    [' GTUBE , NO_RELAYS ,', ['GTUBE', 'NO_RELAYS']],
    ['', []],
    ['\r\n', []],
  ])('symbols %j', (body, expected) => {
    expect(parseSymbols(body)).toEqual(expected);
  });

  it.each([
    ['SPAMD/1.1 0 EX_OK', { protocol: 'SPAMD/1.1', code: 0, text: 'EX_OK' }],
    ['SPAMD/1.5 0 PONG', { protocol: 'SPAMD/1.5', code: 0, text: 'PONG' }],
    ['SPAMD/1.0  76   Bad header line: (x) ', { protocol: 'SPAMD/1.0', code: 76, text: 'Bad header line: (x)' }],
    ['SPAMD/1.1 0', { protocol: 'SPAMD/1.1', code: 0, text: '' }],
    ['HTTP/1.1 200 OK', null],
    ['SPAMD/x 0 EX_OK', null],
    ['SPAMD/1.1 EX_OK', null],
  ])('status line %j', (line, expected) => {
    expect(parseStatusLine(line)).toEqual(expected);
  });

  const reply = (s: string) => parseReply(Buffer.from(s, 'latin1'));
  it('reads a SYMBOLS reply, its body cut to Content-length', () => {
    const r = reply('SPAMD/1.1 0 EX_OK\r\nContent-length: 5\r\nSpam: True ; 1000.0 / 5.0\r\n\r\nGTUBEtrailing');
    expect(r).toMatchObject({ kind: 'ok', protocol: 'SPAMD/1.1', body: 'GTUBE' });
    expect(r.kind === 'ok' && r.headers.get('spam')).toBe('True ; 1000.0 / 5.0');
  });
  it('reads a CHECK reply (no body, no Content-length) and bare LF line ends', () => {
    expect(reply('SPAMD/1.1 0 EX_OK\r\nSpam: False ; 0.0 / 5.0\r\n\r\n')).toMatchObject({ kind: 'ok', body: '' });
    expect(reply('SPAMD/1.1 0 EX_OK\nspam:False;0.0/5.0\n\n')).toMatchObject({ kind: 'ok', body: '' });
  });
  it.each([
    ['SPAMD/1.0 76 Bad header line: (Content-Length mismatch: Expected 100 bytes, got 3 bytes)\r\n', 76],
    ['SPAMD/1.0 69 Service Unavailable: Error fetching user preferences via SQL\r\n', 69],
    ['SPAMD/1.0 866 Message too big\r\n', 866],
  ])('reads a refusal %j', (text, code) => {
    expect(reply(text)).toMatchObject({ kind: 'refused', code });
  });
  it.each([
    ['', 'no complete status line'],
    ['SPAMD/1.1 0 EX_OK', 'no complete status line'],
    ['SPAMD/1.1 0 EX_OK\r\nSpam: Tr', 'inside its headers'],
    ['SPAMD/1.1 0 EX_OK\r\nContent-length: 50\r\nSpam: True ; 9 / 5\r\n\r\nGTU', 'cut short'],
    ['SPAMD/1.1 0 EX_OK\r\nContent-length: many\r\n\r\n', 'bad Content-length'],
    ['SPAMD/1.1 0 EX_OK\r\nno colon here\r\n\r\n', 'bad header line'],
    ['\x16\x03\x01 hello\r\n', 'not a spamd status line'],
  ])('calls %j garbled', (text, reason) => {
    const r = reply(text);
    expect(r.kind).toBe('garbled');
    expect(r.kind === 'garbled' && r.reason).toContain(reason);
  });

  it.each([
    ['X-Spam-Checker-Version: SpamAssassin 4.0.1 (2024-03-25) on vm\r\n', 'SpamAssassin 4.0.1 (2024-03-25)'],
    ['Subject: x\r\nX-Spam-Checker-Version: SpamAssassin 3.4.6 (2021-04-09) on\r\n\tmx1.example.com\r\n', 'SpamAssassin 3.4.6 (2021-04-09)'],
    ['Subject: x\r\n', null],
  ])('checker version from %j', (headers, expected) => {
    expect(checkerVersion(headers)).toBe(expected);
  });
});

describe('spamd adapter details (fake server)', () => {
  let dir: string;
  let fake: FakeServer;
  const seen: SpamdRequest[] = [];
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'ichidan-spamd-'));
    fake = await startFakeServer(fakeSpamd(seen));
  });
  afterAll(async () => {
    await fake.close();
    await rm(dir, { recursive: true, force: true });
  });

  it('fails over from a refusing server to the next, and starts with the one that answered next time', async () => {
    const refusing = { host: '127.0.0.1', port: await closedPort() };
    const engine = createSpamd(spamdOptions.parse({
      name: 'sa', type: 'spamd', servers: [refusing, { host: fake.host, port: fake.port }], timeout: 2_000,
    }), deps);
    fake.behaviour = 'hit';
    const msg = await spooled(dir, 'hit.eml', gtubeMail());
    const first = await timedScan(engine, msg, 2_000);
    expect(first.result.outcome.status, JSON.stringify(first.result)).toBe('spam');
    expect(first.result.detail).toEqual({ server: `${fake.host}:${fake.port}` });
    // The first server comes back; the engine keeps to the one that answered.
    const revived = await startFakeServerOn(refusing.port);
    try {
      const second = await timedScan(engine, msg, 2_000);
      expect(second.result.detail).toEqual({ server: `${fake.host}:${fake.port}` });
      expect(revived.accepted).toBe(0);
    } finally {
      await revived.close();
      await engine.close();
    }
  });

  it('fails over when a server drops the connection without answering', async () => {
    const dropping = await startFakeServer((socket) => { socket.once('data', () => socket.resetAndDestroy()); });
    fake.behaviour = 'clean';
    const engine = createSpamd(spamdOptions.parse({
      name: 'sa', type: 'spamd', servers: [{ host: dropping.host, port: dropping.port }, { host: fake.host, port: fake.port }],
    }), deps);
    const { result } = await timedScan(engine, await spooled(dir, 'c3.eml', CLEAN_MAIL), 2_000);
    expect(result.outcome.status, JSON.stringify(result)).toBe('clean');
    expect(dropping.accepted).toBe(1);
    await engine.close();
    await dropping.close();
  });

  it('reaches spamd over a unix socket, and reports refused when the socket file is missing', async () => {
    const path = join(dir, 'spamd.sock');
    const server = createServer((socket) => fakeSpamd()(socket, 'hit'));
    await new Promise<void>((r) => server.listen(path, r));
    try {
      const engine = createSpamd(spamdOptions.parse({ name: 'sa', type: 'spamd', servers: [{ socket: path }] }), deps);
      const { result } = await timedScan(engine, await spooled(dir, 'u.eml', gtubeMail()), 2_000);
      expect(result).toMatchObject({ outcome: { status: 'spam' }, detail: { server: `unix:${path}` } });
      await engine.close();
      const missing = createSpamd(spamdOptions.parse({ name: 'sa', type: 'spamd', servers: [{ socket: join(dir, 'none.sock') }] }), deps);
      const gone = await timedScan(missing, await spooled(dir, 'u.eml', gtubeMail()), 2_000);
      expect(gone.result.outcome).toMatchObject({ status: 'error', error: 'refused' });
    } finally {
      await new Promise<void>((r) => server.close(() => r()));
    }
  });

  it('reports refused when every server refuses', async () => {
    const engine = createSpamd(spamdOptions.parse({
      name: 'sa', type: 'spamd', timeout: 1_000,
      servers: [{ host: '127.0.0.1', port: await closedPort() }, { host: '127.0.0.1', port: await closedPort() }],
    }), deps);
    const { result } = await timedScan(engine, await spooled(dir, 'c.eml', CLEAN_MAIL), 1_000);
    expect(result.outcome).toMatchObject({ status: 'error', error: 'refused' });
  });

  it('streams the whole message with its exact Content-length, the user and the command', async () => {
    seen.length = 0;
    fake.behaviour = 'clean';
    const engine = createSpamd(spamdOptions.parse({
      name: 'sa', type: 'spamd', servers: [{ host: fake.host, port: fake.port }], user: 'tenant-demo', command: 'CHECK',
    }), deps);
    const big = CLEAN_MAIL + 'x'.repeat(300_000) + '\r\n';
    const { result } = await timedScan(engine, await spooled(dir, 'big.eml', big), 5_000);
    expect(result.outcome).toEqual({ status: 'clean', score: { score: 1.2, threshold: 5, symbols: [] } });
    const scan = seen.find((r) => r.command === 'CHECK')!;
    expect(scan.headers.get('content-length')).toBe(String(Buffer.byteLength(big)));
    expect(scan.headers.get('user')).toBe('tenant-demo');
    expect(scan.body.equals(Buffer.from(big))).toBe(true);
    await engine.close();
  });

  it('pings, and reports the SpamAssassin release and the protocol', async () => {
    const engine = createSpamd(spamdOptions.parse({ name: 'sa', type: 'spamd', servers: [{ host: fake.host, port: fake.port }] }), deps);
    expect(engine.version()).toBeNull();
    expect(await engine.ping!(AbortSignal.timeout(2_000))).toBe(true);
    expect(engine.version()).toBe('SpamAssassin 9.9.9 (2026-01-01); SPAMD/1.5');
    await engine.close();
  });

  it('maps a refusal to a protocol error naming the code', async () => {
    fake.behaviour = 'clean';
    const refusing = await startFakeServer((socket) => {
      socket.once('data', () => socket.end('SPAMD/1.0 76 Bad header line: (Content-Length contains non-numeric bytes)\r\n'));
    });
    const engine = createSpamd(spamdOptions.parse({
      name: 'sa', type: 'spamd', servers: [{ host: refusing.host, port: refusing.port }, { host: fake.host, port: fake.port }],
    }), deps);
    const { result } = await timedScan(engine, await spooled(dir, 'c2.eml', CLEAN_MAIL), 2_000);
    expect(result.outcome).toMatchObject({ status: 'error', error: 'protocol' });
    expect((result.outcome as { message: string }).message).toContain('EX_PROTOCOL (76)');
    await engine.close();
    await refusing.close();
  });

  it('never throws when the spool file is gone', async () => {
    const engine = createSpamd(spamdOptions.parse({ name: 'sa', type: 'spamd', servers: [{ host: fake.host, port: fake.port }], timeout: 1_000 }), deps);
    const path = join(dir, 'missing.eml');
    const missing = { path, size: 10, open: () => createReadStream(path) };
    const result = await engine.scan(missing, CONTEXT, AbortSignal.timeout(1_000));
    expect(result.outcome.status).toBe('error');
    await engine.close();
  });
});

/** A server on a given port that only counts connections. */
async function startFakeServerOn(port: number): Promise<{ accepted: number; close(): Promise<void> }> {
  const counter = { accepted: 0, close: () => new Promise<void>((r) => server.close(() => r())) };
  const server = createServer((socket) => { counter.accepted++; socket.destroy(); });
  await new Promise<void>((r) => server.listen(port, '127.0.0.1', r));
  return counter;
}
