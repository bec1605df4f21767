import { mkdtemp, rm } from 'node:fs/promises';
import type { Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  CLEAN_MAIL, CONTEXT, closedPort, eicarMail, fakeContract, realContract, spooled, startFakeServer, timedScan,
  type ContractSubject, type FakeServer, type FaultBehaviour,
} from '../../test/helpers/engine-contract.js';
import { realDaemon } from '../../test/helpers/daemons.js';
import type { ScanMessage } from '../engine.js';
import { createIcap, icapOptions } from './icap.js';
import {
  ByteReader, encodeChunk, HeaderFields, IcapClosedError, IcapProtocolError, parseEncapsulated, parseOptions,
  readChunked, readReply, threatFromHeaders, threatFromPage,
} from './icap-protocol.js';

const deps = { hostname: 'mx.ichidan.test', resolver: null, log: pino({ level: 'silent' }) };
const CRLF = '\r\n';

/** What the fake server saw of one RESPMOD request. */
interface SeenRequest {
  head: string;
  headers: Record<string, string>;
  /** The encapsulated HTTP request and response headers. */
  reqHdr: string;
  resHdr: string;
  /** Body pieces, split where the client ended the preview (`0` or `0; ieof`). */
  parts: Array<{ data: string; ext: string }>;
  continued: boolean;
  /** Bytes the client sent after the server's final answer. */
  after: number;
  closed: Promise<void>;
}

interface FakeIcap {
  istag: string;
  preview: number | null;
  allow204: boolean;
  methods: string;
  maxConnections: number | null;
  optionsCount: number;
  respmodOpen: number;
  respmodPeak: number;
  seen: SeenRequest[];
  /** Decides after the preview (when not ieof): return true to send 100 Continue. */
  afterPreview: (socket: Socket, req: SeenRequest) => boolean;
  /** Answers once the whole body has arrived. */
  answer: (socket: Socket, req: SeenRequest) => void;
}

/** Splits a chunked body into the parts ended by zero-size chunks; null while incomplete. */
function walkChunks(s: string): { parts: Array<{ data: string; ext: string }>; complete: boolean } {
  const parts: Array<{ data: string; ext: string }> = [];
  let data = '';
  let pos = 0;
  for (;;) {
    const eol = s.indexOf(CRLF, pos);
    if (eol < 0) return { parts, complete: false };
    const [size, ...ext] = s.slice(pos, eol).split(';');
    const n = parseInt(size, 16);
    if (Number.isNaN(n)) throw new Error(`bad chunk line ${JSON.stringify(s.slice(pos, eol))}`);
    if (n === 0) {
      if (s.length < eol + 4) return { parts, complete: false };
      if (s.slice(eol + 2, eol + 4) !== CRLF) throw new Error('trailers are not expected');
      parts.push({ data, ext: ext.join(';').trim() });
      data = '';
      pos = eol + 4;
      if (pos === s.length) return { parts, complete: true };
      continue;
    }
    if (s.length < eol + 2 + n + 2) return { parts, complete: false };
    data += s.slice(eol + 2, eol + 2 + n);
    if (s.slice(eol + 2 + n, eol + 4 + n) !== CRLF) throw new Error('chunk data not followed by CRLF');
    pos = eol + 4 + n;
  }
}

function newFake(init: Partial<FakeIcap> = {}): FakeIcap {
  return {
    istag: 'FAKE-1', preview: 128, allow204: true, methods: 'RESPMOD, REQMOD', maxConnections: null,
    optionsCount: 0, respmodOpen: 0, respmodPeak: 0, seen: [],
    afterPreview: () => true,
    answer: (socket, req) => void socket.end(`ICAP/1.0 204 No Content${CRLF}ISTag: "${req.headers.istag ?? 'FAKE-1'}"${CRLF}${CRLF}`),
    ...init,
  };
}

/** A connection handler speaking just enough ICAP: OPTIONS, and RESPMOD with preview. */
function icapHandler(fake: FakeIcap): (socket: Socket) => void {
  return (socket) => {
    let buf = '';
    let req: SeenRequest | null = null;
    let answered = false;
    let previewDone = false;
    socket.setNoDelay(true);
    socket.on('data', (data: Buffer) => {
      if (answered) {
        if (req) req.after += data.length;
        return;
      }
      buf += data.toString('latin1');
      if (!req) {
        const end = buf.indexOf(CRLF + CRLF);
        if (end < 0) return;
        const head = buf.slice(0, end);
        const headers = Object.fromEntries(head.split(CRLF).slice(1).map((l) => {
          const i = l.indexOf(':');
          return [l.slice(0, i).toLowerCase(), l.slice(i + 1).trim()];
        }));
        if (head.startsWith('OPTIONS ')) {
          fake.optionsCount++;
          answered = true;
          socket.end([
            'ICAP/1.0 200 OK', `Methods: ${fake.methods}`, 'Service: Fake ICAP', `ISTag: "${fake.istag}"`, 'Options-TTL: 3600',
            ...(fake.preview !== null ? [`Preview: ${fake.preview}`] : []), ...(fake.allow204 ? ['Allow: 204'] : []),
            ...(fake.maxConnections !== null ? [`Max-Connections: ${fake.maxConnections}`] : []),
            'Encapsulated: null-body=0', '', '',
          ].join(CRLF));
          return;
        }
        const offsets = Object.fromEntries(headers.encapsulated.split(',').map((e: string) => {
          const [k, v] = e.trim().split('=');
          return [k, Number(v)];
        }));
        const rest = buf.slice(end + 4);
        if (rest.length < offsets['res-body']) return;
        let closedResolve = () => undefined as void;
        req = {
          head, headers, reqHdr: rest.slice(0, offsets['res-hdr']), resHdr: rest.slice(offsets['res-hdr'], offsets['res-body']),
          parts: [], continued: false, after: 0, closed: new Promise<void>((r) => { closedResolve = r; }),
        };
        socket.on('close', closedResolve);
        fake.seen.push(req);
        fake.respmodOpen++;
        fake.respmodPeak = Math.max(fake.respmodPeak, fake.respmodOpen);
        socket.on('close', () => fake.respmodOpen--);
        buf = rest.slice(offsets['res-body']);
      }
      const walked = walkChunks(buf);
      req.parts = walked.parts;
      const preview = req.headers.preview !== undefined;
      if (preview && !previewDone && walked.parts.length >= 1) {
        previewDone = true;
        if (walked.parts[0].ext !== 'ieof') {
          if (!fake.afterPreview(socket, req)) { answered = true; return; }
          req.continued = true;
          socket.write(`ICAP/1.0 100 Continue${CRLF}${CRLF}`);
        }
      }
      const needed = preview && walked.parts[0]?.ext !== 'ieof' ? 2 : 1;
      if (walked.complete && walked.parts.length === needed) {
        answered = true;
        fake.answer(socket, req);
      }
    });
  };
}

function body(req: SeenRequest): string {
  return req.parts.map((p) => p.data).join('');
}

/** An ICAP 200 carrying an encapsulated HTTP response and a chunked body. */
function encapsulated200(icapHeaders: string[], httpHead: string, bodyText: string | null): string {
  const http = httpHead + CRLF + CRLF;
  const enc = bodyText === null ? `res-hdr=0, null-body=${http.length}` : `res-hdr=0, res-body=${http.length}`;
  const chunks = bodyText === null ? '' : `${bodyText.length ? `${Buffer.byteLength(bodyText, 'latin1').toString(16)}${CRLF}${bodyText}${CRLF}` : ''}0${CRLF}${CRLF}`;
  return ['ICAP/1.0 200 OK', ...icapHeaders, `Encapsulated: ${enc}`, '', ''].join(CRLF) + http + chunks;
}

const HIT_REPLY = encapsulated200(
  ['Server: Fake', 'ISTag: "FAKE-1"', 'X-Infection-Found: Type=0; Resolution=2; Threat=Eicar-Test-Signature;'],
  'HTTP/1.1 403 Forbidden\r\nContent-Type: text/html', '<html><body>Virus found: <b>Eicar-Test-Signature</b></body></html>\n');

/** The contract's fake: preview 128 bytes, so the contract's messages go through 100 Continue. */
function fakeIcap(socket: Socket, behaviour: FaultBehaviour): void {
  icapHandler(newFake({
    afterPreview: (s) => {
      if (behaviour !== 'too-large') return true;
      s.end(`ICAP/1.0 413 Request Entity Too Large${CRLF}ISTag: "FAKE-1"${CRLF}Encapsulated: null-body=0${CRLF}${CRLF}`);
      return false;
    },
    answer: (s) => {
      switch (behaviour) {
        case 'clean': return void s.end(`ICAP/1.0 204 No Content${CRLF}ISTag: "FAKE-1"${CRLF}${CRLF}`);
        case 'hit': return void s.end(HIT_REPLY);
        case 'hang': return;
        case 'garbage': return void s.end(`SSH-2.0-OpenSSH_9.2p1${CRLF}${CRLF}`);
        case 'close-mid-reply': return void s.end(HIT_REPLY.slice(0, HIT_REPLY.indexOf('<body>')));
        case 'too-large': return void s.end(`ICAP/1.0 413 Request Entity Too Large${CRLF}${CRLF}`);
      }
    },
  }))(socket);
}

const subject: ContractSubject = {
  name: 'icap',
  fake: fakeIcap,
  make: (target, timeout) => createIcap(icapOptions.parse({
    name: 'icap', type: 'icap', server: { host: target.host, port: target.port }, service: 'avscan', timeout,
  }), deps),
  cleanMessage: CLEAN_MAIL,
  hitMessage: eicarMail(),
  expectHit(result) {
    expect(result.outcome.status, JSON.stringify(result)).toBe('infected');
    expect((result.outcome as { signature: string }).signature).toMatch(/Eicar/i);
    expect(result.detail?.istag).toMatch(/\S/);
  },
};

fakeContract(subject);

const icap = realDaemon('icap') as { host: string; port: number; service?: string } | null;
describe.skipIf(!icap)('icap (real c-icap with virus_scan and clamd; skipped: scripts/engines.sh start has not run)', () => {
  const real: ContractSubject = {
    ...subject,
    make: (target, timeout) => createIcap(icapOptions.parse({
      name: 'icap', type: 'icap', server: { host: target.host, port: target.port }, service: icap!.service ?? 'avscan', timeout,
    }), deps),
  };
  realContract(real, () => icap!);

  it('scans a message larger than the preview (100 Continue) and finds EICAR at its end', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'ichidan-icap-'));
    try {
      const engine = await real.make(icap!, 20_000);
      const padding = 'A line of ordinary text to push the attachment past the preview.\n'.repeat(3000);
      const clean = await spooled(dir, 'big.eml', CLEAN_MAIL + padding.replace(/\n/g, CRLF));
      const hit = await spooled(dir, 'big-hit.eml', eicarMail().replace('Please see', `${padding.replace(/\n/g, CRLF)}Please see`));
      expect((await timedScan(engine, clean, 20_000)).result.outcome).toEqual({ status: 'clean' });
      expect((await timedScan(engine, hit, 20_000)).result.outcome).toMatchObject({ status: 'infected', signature: expect.stringMatching(/Eicar/i) });
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe('icap adapter, RESPMOD and OPTIONS in detail', () => {
  let dir: string;
  let server: FakeServer;
  let fake: FakeIcap;
  let small: ScanMessage;
  let large: ScanMessage;
  const largeText = Array.from({ length: 4000 }, (_, i) => `line ${i} of a longer message body\r\n`).join('');

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'ichidan-icap-'));
    server = await startFakeServer((socket) => icapHandler(fake)(socket));
    small = await spooled(dir, 'small.eml', CLEAN_MAIL);
    large = await spooled(dir, 'large.eml', CLEAN_MAIL + largeText);
  });
  afterAll(async () => {
    await server.close();
    await rm(dir, { recursive: true, force: true });
  });

  const engineFor = (extra: Record<string, unknown> = {}) => createIcap(icapOptions.parse({
    name: 'icap', type: 'icap', server: { host: server.host, port: server.port }, service: '/avscan', timeout: 2_000, ...extra,
  }), deps);
  const scan = (engine: ReturnType<typeof createIcap>, msg: ScanMessage) => engine.scan(msg, CONTEXT, AbortSignal.timeout(2_000));

  it('sends a small message whole in the preview, ended by "0; ieof", with the encapsulated headers', async () => {
    fake = newFake({ preview: 4096 });
    const result = await scan(engineFor(), small);
    expect(result).toMatchObject({ outcome: { status: 'clean' }, detail: { istag: 'FAKE-1', icapStatus: 204 } });
    const req = fake.seen[0];
    expect(req.head.split(CRLF)[0]).toBe(`RESPMOD icap://${server.host}:${server.port}/avscan ICAP/1.0`);
    expect(req.headers).toMatchObject({ preview: String(small.size), allow: '204', host: `${server.host}:${server.port}` });
    expect(req.headers.encapsulated).toBe(`req-hdr=0, res-hdr=${req.reqHdr.length}, res-body=${req.reqHdr.length + req.resHdr.length}`);
    expect(req.reqHdr).toBe(`GET http://mx.ichidan.test/queue/${CONTEXT.queueId}.eml HTTP/1.1${CRLF}Host: mx.ichidan.test${CRLF}${CRLF}`);
    expect(req.resHdr).toBe(`HTTP/1.1 200 OK${CRLF}Content-Type: message/rfc822${CRLF}Content-Length: ${small.size}${CRLF}${CRLF}`);
    expect(req.parts).toEqual([{ data: CLEAN_MAIL, ext: 'ieof' }]);
    expect(req.continued).toBe(false);
  });

  it('sends the preview, waits for 100 Continue, then streams the rest', async () => {
    fake = newFake({ preview: 100 });
    const result = await scan(engineFor(), large);
    expect(result.outcome).toEqual({ status: 'clean' });
    const req = fake.seen[0];
    expect(req.headers.preview).toBe('100');
    expect(req.continued).toBe(true);
    expect(req.parts.map((p) => p.ext)).toEqual(['', '']);
    expect(req.parts[0].data).toBe((CLEAN_MAIL + largeText).slice(0, 100));
    expect(body(req)).toBe(CLEAN_MAIL + largeText);
  });

  it('does not send the rest when the server answers 204 right after the preview', async () => {
    fake = newFake({
      preview: 100,
      afterPreview: (s) => { s.write(`ICAP/1.0 204 No Content${CRLF}ISTag: "FAKE-1"${CRLF}${CRLF}`); return false; },
    });
    const big = await spooled(dir, 'big.eml', CLEAN_MAIL + largeText.repeat(20));
    const result = await scan(engineFor(), big);
    expect(result.outcome).toEqual({ status: 'clean' });
    const req = fake.seen[0];
    await req.closed;
    expect(req.parts).toEqual([{ data: (CLEAN_MAIL + largeText).slice(0, 100), ext: '' }]);
    expect(req.after).toBe(0);
  });

  it('without Allow: 204, reads the echoed body to its end and finds an unchanged message clean', async () => {
    fake = newFake({
      allow204: false,
      answer: (s, req) => void s.end(encapsulated200(['ISTag: "FAKE-1"'],
        `HTTP/1.1 200 OK${CRLF}Content-Type: message/rfc822${CRLF}Via: ICAP/1.0 fake`, body(req))),
    });
    const result = await scan(engineFor(), large);
    expect(result).toMatchObject({ outcome: { status: 'clean' }, detail: { icapStatus: 200, httpStatus: 200 } });
    expect(fake.seen[0].headers.allow).toBeUndefined();
  });

  it('finds a changed body infected, naming the threat from the page or "unknown"', async () => {
    fake = newFake({
      allow204: false,
      answer: (s) => void s.end(encapsulated200(['ISTag: "FAKE-1"'], `HTTP/1.1 200 OK${CRLF}Content-Type: text/plain`, 'attachment removed')),
    });
    expect((await scan(engineFor(), small)).outcome).toEqual({ status: 'infected', signature: 'unknown' });
    fake.answer = (s) => void s.end(encapsulated200(['ISTag: "FAKE-1"'], `HTTP/1.1 403 Forbidden${CRLF}Content-Type: text/html`,
      '<p>The file contains the virus: <b> Win.Test.Thing-1 </b></p>'));
    expect((await scan(engineFor(), small)).outcome).toEqual({ status: 'infected', signature: 'Win.Test.Thing-1' });
    fake.answer = (s) => void s.end(encapsulated200(['ISTag: "FAKE-1"'], `HTTP/1.1 403 Forbidden${CRLF}X-Virus-ID: Trojan.Gen.2`, null));
    expect((await scan(engineFor(), small)).outcome).toEqual({ status: 'infected', signature: 'Trojan.Gen.2' });
  });

  it('parses a reply that arrives a few bytes at a time', async () => {
    fake = newFake({
      answer: (s) => {
        const bytes = Buffer.from(HIT_REPLY, 'latin1');
        let at = 0;
        const next = () => {
          if (s.destroyed) return;
          if (at >= bytes.length) return void s.end();
          s.write(bytes.subarray(at, at + 7));
          at += 7;
          setTimeout(next, 1);
        };
        next();
      },
    });
    const result = await scan(engineFor(), large);
    expect(result.outcome).toEqual({ status: 'infected', signature: 'Eicar-Test-Signature' });
  });

  it('asks OPTIONS once, again when its TTL expires, and reports the new ISTag', async () => {
    fake = newFake({ istag: 'TAG-A' });
    fake.answer = (s) => void s.end(`ICAP/1.0 204 No Content${CRLF}ISTag: "${fake.istag}"${CRLF}${CRLF}`);
    const engine = engineFor({ optionsTtl: '150ms' });
    expect(engine.version()).toBeNull();
    expect((await scan(engine, small)).detail?.istag).toBe('TAG-A');
    expect((await scan(engine, small)).detail?.istag).toBe('TAG-A');
    expect(fake.optionsCount).toBe(1);
    expect(engine.version()).toBe('TAG-A');
    await new Promise((r) => setTimeout(r, 200));
    fake.istag = 'TAG-B';
    expect((await scan(engine, small)).detail?.istag).toBe('TAG-B');
    expect(fake.optionsCount).toBe(2);
    expect(engine.version()).toBe('TAG-B');
  });

  it('asks OPTIONS again before the TTL when a reply carries a new ISTag', async () => {
    fake = newFake({ istag: 'TAG-A' });
    fake.answer = (s) => void s.end(`ICAP/1.0 204 No Content${CRLF}ISTag: "${fake.istag}"${CRLF}${CRLF}`);
    const engine = engineFor();
    await scan(engine, small);
    fake.istag = 'TAG-C';
    expect((await scan(engine, small)).detail?.istag).toBe('TAG-C');
    expect(engine.version()).toBe('TAG-C');
    expect(fake.optionsCount).toBe(1);
    await scan(engine, small);
    expect(fake.optionsCount).toBe(2);
  });

  it('refuses a service without RESPMOD with a clear protocol error', async () => {
    fake = newFake({ methods: 'REQMOD' });
    const result = await scan(engineFor(), small);
    expect(result.outcome).toMatchObject({ status: 'error', error: 'protocol', message: expect.stringMatching(/does not offer RESPMOD.*REQMOD/) });
  });

  it('maps ICAP error statuses: 503 refused, 5xx about size too-large, others protocol', async () => {
    const cases: Array<[string, string]> = [
      ['503 Service Unavailable', 'refused'], ['500 Maximum file size exceeded', 'too-large'],
      ['500 Server Error', 'protocol'], ['404 ICAP Service not found', 'protocol'], ['400 Bad Request', 'protocol'],
    ];
    for (const [status, error] of cases) {
      fake = newFake({ answer: (s) => void s.end(`ICAP/1.0 ${status}${CRLF}ISTag: "FAKE-1"${CRLF}Encapsulated: null-body=0${CRLF}${CRLF}`) });
      expect((await scan(engineFor(), small)).outcome, status).toMatchObject({ status: 'error', error });
    }
  });

  it('fails over to the next server when one refuses, by connection or by 503', async () => {
    fake = newFake();
    const busy = await startFakeServer((socket) => icapHandler(newFake({
      answer: (s) => void s.end(`ICAP/1.0 503 Service Unavailable${CRLF}${CRLF}`),
    }))(socket));
    try {
      for (const first of [{ host: '127.0.0.1', port: await closedPort() }, { host: busy.host, port: busy.port }]) {
        const engine = engineFor({ server: undefined, servers: [first, { host: server.host, port: server.port }] });
        const result = await scan(engine, small);
        expect(result).toMatchObject({ outcome: { status: 'clean' }, detail: { server: `icap://${server.host}:${server.port}/avscan` } });
      }
    } finally {
      await busy.close();
    }
  });

  it('keeps to the server\'s Max-Connections', async () => {
    fake = newFake({
      maxConnections: 1,
      answer: (s) => void setTimeout(() => s.end(`ICAP/1.0 204 No Content${CRLF}ISTag: "FAKE-1"${CRLF}${CRLF}`), 30),
    });
    const engine = engineFor();
    const results = await Promise.all([1, 2, 3].map(() => scan(engine, small)));
    expect(results.map((r) => r.outcome.status)).toEqual(['clean', 'clean', 'clean']);
    expect(fake.respmodPeak).toBe(1);
  });

  it('pings with OPTIONS', async () => {
    fake = newFake();
    expect(await engineFor().ping!(AbortSignal.timeout(1_000))).toBe(true);
    expect(fake.optionsCount).toBe(1);
    const nobody = createIcap(icapOptions.parse({ name: 'i', type: 'icap', server: { port: await closedPort() }, service: 'avscan' }), deps);
    expect(await nobody.ping!(AbortSignal.timeout(1_000))).toBe(false);
  });

  it('takes exactly one of server and servers, with the documented defaults', () => {
    const o = icapOptions.parse({ name: 'i', type: 'icap', server: {}, service: 'avscan' });
    expect(o).toMatchObject({ server: { host: '127.0.0.1', port: 1344 }, timeout: 30_000, maxSize: 25 * 1024 ** 2 });
    expect(o.optionsTtl).toBeUndefined();
    expect(icapOptions.safeParse({ name: 'i', type: 'icap', service: 'avscan' }).success).toBe(false);
    expect(icapOptions.safeParse({ name: 'i', type: 'icap', server: {}, servers: [{}], service: 'avscan' }).success).toBe(false);
    expect(icapOptions.safeParse({ name: 'i', type: 'icap', server: {}, service: 'a b' }).success).toBe(false);
  });
});

describe('icap protocol pieces', () => {
  const C_ICAP_HIT = 'ICAP/1.0 200 OK\r\nServer: C-ICAP/0.5.10\r\nConnection: close\r\nISTag: "CI0001-XYZ"\r\n'
    + 'X-Infection-Found: Type=0; Resolution=2; Threat=Eicar-Test-Signature.UNOFFICIAL;\r\n'
    + 'X-Violations-Found: 1\r\n\t-\r\n\tEicar-Test-Signature.UNOFFICIAL\r\n\t0\r\n\t0\r\n'
    + 'Encapsulated: res-hdr=0, res-body=42\r\n\r\n'
    + 'HTTP/1.0 403 Forbidden\r\nServer: C-ICAP\r\n\r\n'
    + '1b\r\n<b> VIRUS FOUND </b>\n\0\0\0\0\0\0\r\n0\r\n\r\n';

  it('reads a reply split at every possible byte boundary', async () => {
    const bytes = Buffer.from(C_ICAP_HIT, 'latin1');
    for (let cut = 1; cut < bytes.length; cut++) {
      const reader = new ByteReader();
      const reply = readReply(reader);
      reader.push(bytes.subarray(0, cut));
      await new Promise((r) => setImmediate(r));
      reader.push(bytes.subarray(cut));
      reader.end();
      const r = await reply;
      expect(r.status).toBe(200);
      expect(r.http?.status).toBe(403);
      expect(r.body?.length).toBe(0x1b);
      expect(threatFromHeaders(r.headers)).toBe('Eicar-Test-Signature.UNOFFICIAL');
    }
  });

  it('reads the threat name from X-Violations-Found when it is the only one', () => {
    const h = new HeaderFields(['X-Violations-Found: 1', '\tinvoice.com', '\tW32.Test.Thing', '\t2', '\t0']);
    expect(threatFromHeaders(h)).toBe('W32.Test.Thing');
    expect(threatFromHeaders(new HeaderFields(['X-Virus-Name: Foo.Bar']))).toBe('Foo.Bar');
    expect(threatFromHeaders(new HeaderFields(['ISTag: "x"']))).toBeNull();
    expect(threatFromPage(Buffer.from('<h1>VIRUS FOUND</h1> contains the virus:\n <b> Eicar-Test-Signature </b>'))).toBe('Eicar-Test-Signature');
    expect(threatFromPage(Buffer.from('<h1>Access denied</h1>'))).toBeNull();
  });

  it('decodes chunks with extensions and trailers, and rejects malformed ones', async () => {
    const reader = new ByteReader();
    const pieces: string[] = [];
    reader.push(Buffer.from('5;name=x\r\nhello\r\n6\r\n world\r\n0; ieof\r\nX-Trailer: 1\r\n\r\n'));
    expect(await readChunked(reader, (p) => pieces.push(p.toString()))).toBe('ieof');
    expect(pieces.join('')).toBe('hello world');

    const encoded = Buffer.concat(encodeChunk(Buffer.from('abc'))).toString();
    expect(encoded).toBe('3\r\nabc\r\n');

    for (const bad of ['zz\r\nhello\r\n0\r\n\r\n', '3\r\nabcdef\r\n0\r\n\r\n']) {
      const r = new ByteReader();
      r.push(Buffer.from(bad));
      r.end();
      await expect(readChunked(r, () => undefined)).rejects.toBeInstanceOf(IcapProtocolError);
    }
    const cut = new ByteReader();
    cut.push(Buffer.from('a\r\nhel'));
    cut.end();
    await expect(readChunked(cut, () => undefined)).rejects.toBeInstanceOf(IcapClosedError);
  });

  it('checks Encapsulated offsets and reads OPTIONS answers', async () => {
    expect(parseEncapsulated('req-hdr=0, res-hdr=45, res-body=120').map((e) => e.offset)).toEqual([0, 45, 120]);
    expect(() => parseEncapsulated('res-body=0, res-hdr=10')).toThrow(IcapProtocolError);
    expect(() => parseEncapsulated('res-hdr=5, res-body=10')).toThrow(IcapProtocolError);
    expect(() => parseEncapsulated('res-hdr=0; res-body=10')).toThrow(IcapProtocolError);

    const reader = new ByteReader();
    reader.push(Buffer.from('ICAP/1.0 200 OK\r\nMethods: RESPMOD, REQMOD\r\nISTag: "CI0001-abc"\r\nOptions-TTL: 1\r\n'
      + 'Preview: 1024\r\nAllow: 204\r\nMax-Connections: 30\r\nEncapsulated: null-body=0\r\n\r\n'));
    expect(parseOptions(await readReply(reader))).toEqual({
      istag: 'CI0001-abc', methods: ['RESPMOD', 'REQMOD'], preview: 1024, allow204: true, maxConnections: 30, ttlMs: 1000,
    });
  });

  it('rejects a status line that is not ICAP at once, without waiting for a header block', async () => {
    const reader = new ByteReader();
    const reply = readReply(reader);
    reader.push(Buffer.from('HTTP/1.1 200 OK\r\n'));
    await expect(reply).rejects.toBeInstanceOf(IcapProtocolError);
  });
});
