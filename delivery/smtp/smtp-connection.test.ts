import { createServer, type Server, type Socket } from 'node:net';
import { PassThrough, Readable } from 'node:stream';
import { SMTPServer } from 'smtp-server';
import { afterEach, describe, expect, it } from 'vitest';
import { tlsProblem } from '../delivery-tls.js';
import { SmtpConnection, type WireLogger } from './smtp-connection.js';

const quiet: WireLogger = { trace() {}, debug() {}, info() {}, warn() {}, error() {}, fatal() {} };
const servers: Array<Server | SMTPServer> = [];
afterEach(async () => {
  for (const s of servers.splice(0)) await new Promise((r) => s.close(() => r(undefined)));
});

/**
 * A scripted SMTP peer on 127.0.0.1: `answer` gets each complete line the client sent (and the
 * socket) and returns what to write back (nothing: stay silent). Every line is kept in `seen`.
 */
async function peer(greeting: string | null, answer: (line: string, socket: Socket) => string | null): Promise<{ port: number; seen: string[]; chunks: string[] }> {
  const seen: string[] = [];
  const chunks: string[] = [];
  const server = createServer((socket) => {
    socket.on('error', () => undefined);
    if (greeting !== null) socket.write(greeting);
    let buffer = '';
    socket.on('data', (d) => {
      chunks.push(d.toString('latin1'));
      buffer += d.toString('latin1');
      let nl: number;
      while ((nl = buffer.indexOf('\n')) >= 0) {
        const line = buffer.slice(0, nl).replace(/\r$/, '');
        buffer = buffer.slice(nl + 1);
        seen.push(line);
        const out = answer(line, socket);
        if (out !== null) socket.write(out);
      }
    });
  });
  servers.push(server);
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  return { port: (server.address() as { port: number }).port, seen, chunks };
}

function open(port: number, replyTimeout = 5_000, logger: WireLogger = quiet): SmtpConnection {
  return new SmtpConnection({ address: '127.0.0.1', port, connectTimeout: 5_000, replyTimeout, logger });
}

/** A peer that answers commands as an ordinary ESMTP server would; in DATA it collects the body. */
function esmtp(extensions: string[]) {
  let inData = false;
  const bodies: string[] = [];
  let body: string[] = [];
  const answer = (line: string): string | null => {
    if (inData) {
      if (line !== '.') { body.push(line); return null; }
      inData = false;
      bodies.push(body.join('\r\n'));
      body = [];
      return '250 2.0.0 queued\r\n';
    }
    const verb = line.split(' ')[0].toUpperCase();
    if (verb === 'EHLO') return ['peer.test hello', ...extensions].map((e, i, all) => `250${i === all.length - 1 ? ' ' : '-'}${e}`).join('\r\n') + '\r\n';
    if (verb === 'DATA') { inData = true; return '354 go ahead\r\n'; }
    if (verb === 'QUIT') return '221 bye\r\n';
    return '250 2.0.0 ok\r\n';
  };
  return { answer, bodies };
}

/** A connection to an ordinary ESMTP peer with MAIL and RCPT said: DATA is next. */
async function inTransaction(): Promise<{ client: SmtpConnection; peerState: ReturnType<typeof esmtp> }> {
  const peerState = esmtp([]);
  const { port } = await peer('220 p.test\r\n', peerState.answer);
  const client = open(port);
  await client.connect();
  await client.hello('me.test');
  await client.command('MAIL FROM:<s@x.test>');
  await client.command('RCPT TO:<r@x.test>');
  return { client, peerState };
}

describe('SMTP connection', () => {
  it('ends QUIT at once when the destination closes without its 221, leaving no reply timer behind', async () => {
    const { port } = await peer('220 drop.test\r\n', (line, s) => (/^QUIT/.test(line) ? (s.destroy(), null) : '250 ok\r\n'));
    const client = open(port, 60_000);
    await client.connect();
    expect((await client.hello('proxy.test')).code).toBe(250);
    const started = Date.now();
    await client.quit();
    expect(Date.now() - started).toBeLessThan(2_000);
    expect(client.ended).toBe(true);
  });

  it('refuses a second command while one still waits for its reply, so replies never pair with the wrong command', async () => {
    const { port } = await peer('220 drop.test\r\n', () => '250 ok\r\n');
    const client = open(port, 60_000);
    await client.connect();
    const first = client.command('NOOP');
    await expect(client.command('RSET')).rejects.toMatchObject({ code: 'EBUSY' });
    expect((await first).code).toBe(250);
    client.close();
  });

  it('reads a multi-line greeting and EHLO whole, and records the extensions and the SIZE limit', async () => {
    const { port } = await peer('220-peer.test\r\n220 second line\r\n', esmtp(['PIPELINING', 'SIZE 1000', 'DSN']).answer);
    const client = open(port);
    const greeting = await client.connect();
    expect(greeting).toEqual({ code: 220, lines: ['peer.test', 'second line'], raw: '220-peer.test\r\n220 second line' });
    expect((await client.hello('me.test')).code).toBe(250);
    expect([...client.extensions.keys()]).toEqual(['PIPELINING', 'SIZE', 'DSN']);
    expect(client.maxSize).toBe(1000);
    client.close();
  });

  it('falls back to HELO when EHLO is refused with a 5xx, but not when the session must turn to TLS', async () => {
    const answer = (line: string) => (/^EHLO/.test(line) ? '502 5.5.1 no EHLO here\r\n' : '250 peer.test\r\n');
    const plain = await peer('220 old.test\r\n', answer);
    const client = open(plain.port);
    await client.connect();
    expect(await client.handshake({ name: 'me.test', lmtp: false, starttls: 'offered', tls: {} })).toBeNull();
    expect(plain.seen).toEqual(['EHLO me.test', 'HELO me.test']);
    client.close();

    const strict = await peer('220 old.test\r\n', answer);
    const tls = open(strict.port);
    await tls.connect();
    expect(await tls.handshake({ name: 'me.test', lmtp: false, starttls: 'always', tls: {} })).toMatchObject({ step: 'hello', reply: { code: 502 } });
    expect(strict.seen).toEqual(['EHLO me.test']);
    tls.close();
  });

  it('says LHLO for LMTP and reads one reply per recipient after the final dot', async () => {
    let inData = false;
    const { port } = await peer('220 lmtp.test\r\n', (line) => {
      if (inData) return line === '.' ? (inData = false, '250 2.1.5 <a@x.test> delivered\r\n452 4.2.2 <b@x.test> over quota\r\n') : null;
      if (line === 'DATA') { inData = true; return '354 go\r\n'; }
      return '250 ok\r\n';
    });
    const client = open(port);
    await client.connect();
    expect(await client.handshake({ name: 'me.test', lmtp: true, starttls: 'never', tls: {} })).toBeNull();
    await client.pipeline(['MAIL FROM:<s@x.test>', 'RCPT TO:<a@x.test>', 'RCPT TO:<b@x.test>']);
    expect((await client.command('DATA')).code).toBe(354);
    const finals = await client.body(Readable.from([Buffer.from('Subject: x\r\n\r\nhi\r\n')]), 2);
    expect(finals.map((r) => r.code)).toEqual([250, 452]);
    expect(finals[1].lines).toEqual(['4.2.2 <b@x.test> over quota']);
    client.close();
  });

  it('pipelines: every command goes out before the first reply is read', async () => {
    // This peer answers only once it holds all three commands: a client waiting for each reply would time out.
    const held: string[] = [];
    const { port } = await peer('220 p.test\r\n', (line) => {
      held.push(line);
      return held.length === 3 ? '250 2.1.0 sender ok\r\n550 5.1.1 no such user\r\n354 go\r\n' : null;
    });
    const client = open(port, 1_000);
    await client.connect();
    const replies = await client.pipeline(['MAIL FROM:<s@x.test>', 'RCPT TO:<nobody@x.test>', 'DATA']);
    expect(replies.map((r) => r.code)).toEqual([250, 550, 354]);
    client.close();
  });

  it('dot-stuffs the body and ends it with CRLF "." CRLF even when the body has no final line break', async () => {
    const { client, peerState } = await inTransaction();
    // The dot begins a line in the middle of a chunk and at the start of the next chunk.
    const reply = await client.data(Readable.from([Buffer.from('a\r\n.one\r\n'), Buffer.from('.two\r\nlast')]));
    expect(reply.code).toBe(250);
    expect(peerState.bodies).toEqual(['a\r\n..one\r\n..two\r\nlast']);
    client.close();
  });

  it('sends a body that ends in the turn its last chunk came in, and the final dot, in one write', async () => {
    const { client, peerState } = await inTransaction();
    expect(await client.command('DATA')).toMatchObject({ code: 354 });
    // What the socket hands to the kernel, one call a write (writev included).
    const socket = client.socket as unknown as { _writeGeneric: (...args: unknown[]) => unknown };
    const writeGeneric = socket._writeGeneric.bind(socket);
    const writes: number[] = [];
    socket._writeGeneric = (writev: unknown, data: unknown, ...rest: unknown[]) => {
      writes.push(writev ? (data as Array<{ chunk: Buffer }>).reduce((n, c) => n + c.chunk.length, 0) : (data as Buffer).length);
      return writeGeneric(writev, data, ...rest);
    };
    const body = new PassThrough();
    const replies = client.body(body, 1);
    body.write(Buffer.alloc(2048, 'a'));
    body.end(Buffer.from('\r\nlast line\r\n'));
    expect((await replies)[0].code).toBe(250);
    expect(writes).toEqual([2048 + 13 + 3]);
    expect(peerState.bodies).toEqual([`${'a'.repeat(2048)}\r\nlast line`]);
    client.close();
  });

  it('takes a 421 as the answer to every command still waiting, and ends the connection', async () => {
    const { port } = await peer('220 p.test\r\n', (line) => (line.startsWith('MAIL') ? '421 4.7.0 too many messages, closing\r\n' : null));
    const client = open(port, 2_000);
    await client.connect();
    const ended = new Promise<void>((r) => client.once('end', () => r()));
    const replies = await client.pipeline(['MAIL FROM:<s@x.test>', 'RCPT TO:<r@x.test>', 'DATA']);
    expect(replies.map((r) => r.code)).toEqual([421, 421, 421]);
    await ended;
    expect(client.ended).toBe(true);
  });

  it('rejects a reply that does not come within the reply timeout with ETIMEDOUT, and closes', async () => {
    const { port } = await peer('220 p.test\r\n', () => null);
    const client = open(port, 200);
    await client.connect();
    const started = Date.now();
    await expect(client.command('NOOP')).rejects.toMatchObject({ code: 'ETIMEDOUT' });
    expect(Date.now() - started).toBeLessThan(2_000);
    await new Promise((r) => setTimeout(r, 50));
    expect(client.ended).toBe(true);
  });

  it('rejects a line that is not an SMTP reply as a protocol error', async () => {
    const { port } = await peer('hello there\r\n', () => null);
    const client = open(port);
    await expect(client.connect()).rejects.toMatchObject({ code: 'EPROTOCOL' });
  });

  it('ends (and stops counting) a connection that was refused', async () => {
    const { port } = await peer(null, () => null);
    await new Promise((r) => servers.pop()!.close(() => r(undefined)));
    const client = open(port);
    const ended = new Promise<void>((r) => client.once('end', () => r()));
    await expect(client.connect()).rejects.toMatchObject({ code: 'ECONNREFUSED' });
    await ended;
  });

  it('logs commands, replies and the body size on its wire log, never the body', async () => {
    const lines: string[] = [];
    const logger: WireLogger = {
      ...quiet,
      debug: (entry, message) => { lines.push(`${String(entry.tnx)} ${message}`); },
      info: (entry, message) => { if (entry.tnx === 'message') lines.push(`message ${String(entry.outByteCount)}`); else if (entry.tnx === 'network') lines.push(`network ${String(entry.remoteAddress)}`); void message; },
    };
    const { port } = await peer('220 p.test\r\n', esmtp([]).answer);
    const client = open(port, 5_000, logger);
    await client.connect();
    await client.command('MAIL FROM:<s@x.test>');
    await client.command('RCPT TO:<r@x.test>');
    await client.data(Readable.from([Buffer.from('SECRET-BODY\r\n')]));
    client.close();
    expect(lines).toEqual([
      'network 127.0.0.1', 'server 220 p.test',
      'client MAIL FROM:<s@x.test>', 'server 250 2.0.0 ok', 'client RCPT TO:<r@x.test>', 'server 250 2.0.0 ok',
      'client DATA', 'server 354 go ahead', 'message 16', 'server 250 2.0.0 queued',
    ]);
  });

  it('turns to TLS with STARTTLS; the one TLS check then judges the session by its level', async () => {
    const server = new SMTPServer({ logger: false, disableReverseLookup: true, authOptional: true, onData(stream, _s, cb) { stream.resume(); stream.on('end', () => cb()); } });
    servers.push(server);
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
    const port = (server.server.address() as { port: number }).port;
    const client = open(port);
    await client.connect();
    expect(tlsProblem(client.socket, 'require', 'mx.peer.test')).toBe('STARTTLS not offered or not completed');
    expect(await client.handshake({ name: 'me.test', lmtp: false, starttls: 'offered', tls: { rejectUnauthorized: false, checkServerIdentity: () => undefined } })).toBeNull();
    expect(client.socket && 'encrypted' in client.socket && client.socket.encrypted).toBe(true);
    expect(client.extensions.has('STARTTLS')).toBe(false);
    expect(tlsProblem(client.socket, 'opportunistic', 'mx.peer.test')).toBeNull();
    expect(tlsProblem(client.socket, 'require', 'mx.peer.test')).toBeNull();
    // smtp-server's own self-signed certificate: encrypted, but not verified.
    expect(tlsProblem(client.socket, 'require-verified', 'mx.peer.test')).toMatch(/^certificate not valid: /);
    await client.quit();
  });
});
