import { mkdtemp, rm } from 'node:fs/promises';
import type { Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  CLEAN_MAIL, CONTEXT, fakeContract, gtubeMail, realContract, spooled, startFakeServer, timedScan,
  type ContractSubject, type FakeServer, type FaultBehaviour,
} from '../../test/helpers/engine-contract.js';
import { SKIP_REASON, realDaemon } from '../../test/helpers/daemons.js';
import type { ScanContext } from '../engine.js';
import { createRspamd, rspamdOptions } from './rspamd.js';
import { errorText, headerValue, parseCheckReply, requestHeaders } from './rspamd-protocol.js';

const deps = { hostname: 'mx.ichidan.test', resolver: null, log: pino({ level: 'silent' }) };

interface HttpRequest {
  method: string;
  path: string;
  /** Header lines in order, names lower-cased, repeated names kept. */
  headers: [string, string][];
  body: Buffer;
}

const json = (value: unknown) => JSON.stringify(value);
const CLEAN_REPLY = json({
  is_skipped: false, score: 1.2, required_score: 15, action: 'no action',
  symbols: { MIME_GOOD: { name: 'MIME_GOOD', score: -0.1 }, MISSING_MID: { name: 'MISSING_MID', score: 2.5 } }, messages: {},
});
const HIT_REPLY = json({
  is_skipped: true, score: 15, required_score: 15, action: 'reject',
  symbols: { GTUBE: { name: 'GTUBE', score: 0 } }, messages: { smtp_message: 'Gtube pattern' },
});

function response(status: string, body: string, type = 'application/json'): string {
  return `HTTP/1.1 ${status}\r\nConnection: close\r\nServer: rspamd/9.9\r\nContent-Length: ${Buffer.byteLength(body)}\r\n`
    + `Content-Type: ${type}\r\n\r\n${body}`;
}

/** Reads one HTTP/1.1 request (head, then Content-Length bytes), records it, answers per behaviour. */
function fakeRspamd(seen: HttpRequest[] = []) {
  return (socket: Socket, behaviour: FaultBehaviour): void => {
    let buf = Buffer.alloc(0);
    let request: HttpRequest | null = null;
    let length = 0;
    socket.on('data', (data: Buffer) => {
      buf = Buffer.concat([buf, data]);
      if (!request) {
        const end = buf.indexOf('\r\n\r\n');
        if (end < 0) return;
        const [first, ...lines] = buf.subarray(0, end).toString('latin1').split('\r\n');
        const [method, path] = first.split(' ');
        const headers = lines.map((l): [string, string] => [l.slice(0, l.indexOf(':')).toLowerCase(), l.slice(l.indexOf(':') + 1).trim()]);
        request = { method, path, headers, body: Buffer.alloc(0) };
        length = Number(headers.find(([n]) => n === 'content-length')?.[1] ?? 0);
        buf = buf.subarray(end + 4);
      }
      if (buf.length < length) return;
      request.body = buf.subarray(0, length);
      seen.push(request);
      if (request.path.endsWith('/ping')) return void socket.end(response('200 OK', 'pong\r\n', 'text/plain'));
      answer(socket, behaviour);
    });
  };
}

function answer(socket: Socket, behaviour: FaultBehaviour): void {
  switch (behaviour) {
    case 'clean': return void socket.end(response('200 OK', CLEAN_REPLY));
    case 'hit': return void socket.end(response('200 OK', HIT_REPLY));
    case 'hang': return;
    case 'garbage': return void socket.end(Buffer.from([0x16, 0x03, 0x01, 0x00, 0xa5, 0x01, 0xff, 0x0d, 0x0a, 0x0d, 0x0a]));
    case 'close-mid-reply': return void socket.end(response('200 OK', HIT_REPLY).slice(0, 40));
    case 'too-large': return void socket.end(response('413 Payload Too Large', json({ error: 'message too large' })));
  }
}

const subject: ContractSubject = {
  name: 'rspamd',
  fake: fakeRspamd(),
  make: (target, timeout) => createRspamd(rspamdOptions.parse({ name: 'rspamd', type: 'rspamd', url: `http://${target.host}:${target.port}`, timeout }), deps),
  cleanMessage: CLEAN_MAIL,
  hitMessage: gtubeMail(),
  expectHit(result) {
    expect(result.outcome.status, JSON.stringify(result)).toBe('spam');
    const score = (result.outcome as { score: { action?: string; symbols: string[] } }).score;
    expect(score.action).toBe('reject');
    expect(score.symbols).toContain('GTUBE');
  },
};

fakeContract(subject);

const daemon = realDaemon('rspamd');
describe.skipIf(!daemon)(`rspamd real daemon (${SKIP_REASON})`, () => {
  realContract(subject, () => daemon!);
});

describe('rspamd request headers', () => {
  it('carries the whole transaction', () => {
    const h = requestHeaders({ ...CONTEXT, recipients: ['a@x.test', 'b@y.test'], authUser: 'alice', clientName: 'mail.sender.test' }, 321);
    expect(h).toEqual({
      'Content-Length': '321', IP: '192.0.2.10', Helo: 'client.sender.test', From: 'alice@sender.test',
      Rcpt: ['a@x.test', 'b@y.test'], 'Queue-Id': '0000000000000TEST', User: 'alice', Hostname: 'mail.sender.test',
    });
  });
  it('says <> for the null sender, unknown for a failed lookup, nothing for no lookup or no login', () => {
    const failed = requestHeaders({ ...CONTEXT, sender: '', clientName: null }, 1);
    expect(failed.From).toBe('<>');
    expect(failed.Hostname).toBe('unknown');
    const unlooked = requestHeaders({ ...CONTEXT }, 1);
    expect(unlooked).not.toHaveProperty('Hostname');
    expect(unlooked).not.toHaveProperty('User');
  });
  it('sends UTF-8 as bytes and drops control characters', () => {
    expect(Buffer.from(headerValue('δοκιμή@παράδειγμα.test'), 'latin1').toString('utf8')).toBe('δοκιμή@παράδειγμα.test');
    expect(headerValue('evil\r\nUser: root')).toBe('evilUser: root');
  });
});

describe('rspamd reply parser', () => {
  it.each([
    ['well-formed', HIT_REPLY, { action: 'reject', score: 15, requiredScore: 15, symbols: ['GTUBE'], smtpMessage: 'Gtube pattern' }],
    ['negative score', json({ action: 'no action', score: -3.25, required_score: 15, symbols: { BAYES_HAM: {} } }),
      { action: 'no action', score: -3.25, requiredScore: 15, symbols: ['BAYES_HAM'], smtpMessage: null }],
    ['no symbols, no required score', json({ action: 'add header', score: 7 }),
      { action: 'add header', score: 7, requiredScore: null, symbols: [], smtpMessage: null }],
    ['odd spacing and extra keys', ' \n{ "score" : 4.5 ,"action":"greylist", "required_score":15.0, "urls":[] }\n',
      { action: 'greylist', score: 4.5, requiredScore: 15, symbols: [], smtpMessage: null }],
    ['a custom action', json({ action: 'discard', score: 30, required_score: 15 }),
      { action: 'discard', score: 30, requiredScore: 15, symbols: [], smtpMessage: null }],
  ])('reads %s', (_name, body, reply) => {
    expect(parseCheckReply(body)).toEqual({ ok: true, reply });
  });
  it.each([
    ['not JSON', 'pong', 'not JSON'],
    ['no score', json({ action: 'reject', required_score: 15 }), '"score"'],
    ['a score as text', json({ action: 'reject', score: '15', required_score: 15 }), '"score"'],
    ['no action', json({ score: 1, required_score: 15 }), '"action"'],
    ['an array', '[]', 'usable'],
    ['cut short', HIT_REPLY.slice(0, 30), 'not JSON'],
  ])('refuses %s', (_name, body, reason) => {
    const r = parseCheckReply(body);
    expect(r.ok).toBe(false);
    expect(!r.ok && r.reason).toContain(reason);
  });
  it('shows the error text of an error reply', () => {
    expect(errorText(json({ error: 'invalid command', error_domain: 'protocol-error' }))).toBe('invalid command');
    expect(errorText('<html>bad gateway</html>')).toBe('<html>bad gateway</html>');
  });
});

describe('rspamd adapter details (fake server)', () => {
  let dir: string;
  let fake: FakeServer;
  const seen: HttpRequest[] = [];
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'ichidan-rspamd-'));
    fake = await startFakeServer(fakeRspamd(seen));
  });
  afterAll(async () => {
    await fake.close();
    await rm(dir, { recursive: true, force: true });
  });
  const engine = (extra: Record<string, unknown> = {}) =>
    createRspamd(rspamdOptions.parse({ name: 'rspamd', type: 'rspamd', url: `http://${fake.host}:${fake.port}`, ...extra }), deps);

  it('sends every context header, one Rcpt per recipient, and the whole message', async () => {
    seen.length = 0;
    fake.behaviour = 'clean';
    const context: ScanContext = {
      queueId: 'Q0123456789AB', client: '198.51.100.7', clientName: 'mx.sender.test', helo: 'helo.sender.test',
      sender: 'carol@sender.test', recipients: ['r1@example.test', 'r2@example.test', 'r3@example.test'], authUser: 'carol',
    };
    const text = CLEAN_MAIL + 'y'.repeat(200_000) + '\r\n';
    const result = await engine().scan(await spooled(dir, 'ctx.eml', text), context, AbortSignal.timeout(5_000));
    expect(result.outcome.status).toBe('clean');
    const req = seen.at(-1)!;
    expect(req.method).toBe('POST');
    expect(req.path).toBe('/checkv2');
    const all = (name: string) => req.headers.filter(([n]) => n === name).map(([, v]) => v);
    expect(all('ip')).toEqual(['198.51.100.7']);
    expect(all('helo')).toEqual(['helo.sender.test']);
    expect(all('from')).toEqual(['carol@sender.test']);
    expect(all('rcpt')).toEqual(['r1@example.test', 'r2@example.test', 'r3@example.test']);
    expect(all('user')).toEqual(['carol']);
    expect(all('queue-id')).toEqual(['Q0123456789AB']);
    expect(all('hostname')).toEqual(['mx.sender.test']);
    expect(all('content-length')).toEqual([String(Buffer.byteLength(text))]);
    expect(req.body.equals(Buffer.from(text))).toBe(true);
  });

  it('keeps the action and the required score in a clean result', async () => {
    fake.behaviour = 'clean';
    const { result } = await timedScan(engine(), await spooled(dir, 'c.eml', CLEAN_MAIL), 2_000);
    expect(result.outcome).toEqual({
      status: 'clean', score: { score: 1.2, threshold: 15, symbols: ['MIME_GOOD', 'MISSING_MID'], action: 'no action' },
    });
  });

  it('uses a configured threshold for both the verdict and the score', async () => {
    fake.behaviour = 'clean';
    const { result } = await timedScan(engine({ threshold: 1 }), await spooled(dir, 'c.eml', CLEAN_MAIL), 2_000);
    expect(result.outcome).toMatchObject({ status: 'spam', score: { score: 1.2, threshold: 1, action: 'no action' } });
  });

  it('keeps a path prefix, pings, and reports the Server header as version', async () => {
    seen.length = 0;
    const e = engine({ url: `http://${fake.host}:${fake.port}/rspamd/` });
    expect(e.version()).toBeNull();
    expect(await e.ping!(AbortSignal.timeout(2_000))).toBe(true);
    expect(seen.at(-1)).toMatchObject({ method: 'GET', path: '/rspamd/ping' });
    expect(e.version()).toBe('rspamd/9.9');
    fake.behaviour = 'hit';
    await timedScan(e, await spooled(dir, 'h.eml', gtubeMail()), 2_000);
    expect(seen.at(-1)).toMatchObject({ method: 'POST', path: '/rspamd/checkv2' });
  });

  it('reports a non-200 reply as a protocol error with rspamd\'s reason', async () => {
    const failing = await startFakeServer((socket) => {
      socket.once('data', () => socket.end(response('500 invalid command', json({ error: 'invalid command', error_domain: 'protocol-error' }))));
    });
    const e = createRspamd(rspamdOptions.parse({ name: 'r', type: 'rspamd', url: `http://${failing.host}:${failing.port}` }), deps);
    const { result } = await timedScan(e, await spooled(dir, 'c.eml', CLEAN_MAIL), 2_000);
    expect(result.outcome).toMatchObject({ status: 'error', error: 'protocol', message: 'rspamd: HTTP 500 invalid command' });
    await failing.close();
  });

  it('reports io, never clean, when rspamd closes without a reply (its answer to a message over max_message)', async () => {
    const closing = await startFakeServer((socket) => { socket.once('data', () => socket.destroy()); });
    const e = createRspamd(rspamdOptions.parse({ name: 'r', type: 'rspamd', url: `http://${closing.host}:${closing.port}` }), deps);
    const { result } = await timedScan(e, await spooled(dir, 'big.eml', CLEAN_MAIL + 'z'.repeat(2_000_000)), 2_000);
    expect(result.outcome).toMatchObject({ status: 'error', error: 'io' });
    await closing.close();
  });

  it('reports a 413 sent before the whole body went out as too-large', async () => {
    // The status line and headers first, the body a little later, all while the upload still flows.
    const early = await startFakeServer((socket) => {
      const reply = response('413 Payload Too Large', json({ error: 'too large' }));
      const split = reply.indexOf('\r\n\r\n') + 4;
      socket.once('data', () => {
        socket.write(reply.slice(0, split));
        setTimeout(() => socket.write(reply.slice(split)), 100);
      });
      socket.resume();
    });
    const e = createRspamd(rspamdOptions.parse({ name: 'r', type: 'rspamd', url: `http://${early.host}:${early.port}` }), deps);
    const { result } = await timedScan(e, await spooled(dir, 'big2.eml', CLEAN_MAIL + 'z'.repeat(8_000_000)), 3_000);
    expect(result.outcome).toMatchObject({ status: 'error', error: 'too-large' });
    await early.close();
  });

  it('refuses a URL that is not http://', () => {
    expect(() => rspamdOptions.parse({ name: 'r', type: 'rspamd', url: 'ftp://127.0.0.1:11333' })).toThrow();
  });
});
