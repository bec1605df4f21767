import { Readable } from 'node:stream';
import { SMTPServer } from 'smtp-server';
import { describe, expect, it } from 'vitest';
import { failureReason, Transcript, type TranscriptChunk, type TranscriptLine } from './delivery-transcript.js';
import { SmtpConnection } from './smtp/smtp-connection.js';
import { sendEnvelope } from './smtp/smtp-envelope.js';

const INIT = { host: 'mx.remote.test', protocol: 'smtp' as const, address: '127.0.0.1', port: 25, helo: 'out.ichidan.test', maxBytes: 64 * 1024 };

function collect(): { chunks: TranscriptChunk[]; lines: () => TranscriptLine[]; sink: (c: TranscriptChunk) => void } {
  const chunks: TranscriptChunk[] = [];
  return { chunks, lines: () => chunks.flatMap((c) => c.lines), sink: (c) => chunks.push(c) };
}

/** Feeds a transcript the way an SmtpConnection's wire log does. */
function wire(t: Transcript) {
  return {
    connected: () => t.logger.info({ tnx: 'network', localAddress: '127.0.0.1', localPort: 40000, remoteAddress: '127.0.0.1', remotePort: 25 }, '%s established', 'Connection'),
    c: (line: string) => t.logger.debug({ tnx: 'client' }, line),
    s: (line: string) => t.logger.debug({ tnx: 'server' }, line),
  };
}

describe('transcript recorder, fed as the connection feeds it', () => {
  it('masks AUTH arguments and every answer to a 334 challenge, and nothing after', () => {
    const out = collect();
    const t = new Transcript(INIT, out.sink);
    const w = wire(t);
    w.connected();
    w.c('AUTH PLAIN AGFubgBzM2NyZXQ=');
    w.s('235 2.7.0 ok');
    w.c('AUTH LOGIN');
    w.s('334 VXNlcm5hbWU6');
    w.c('YW5u');
    w.s('334 UGFzc3dvcmQ6');
    w.c('czNjcmV0');
    w.s('235 2.7.0 ok');
    w.c('AUTH XOAUTH2 dXNlcj1hbm4BYXV0aD1CZWFyZXIgdG9rZW4BAQ==');
    w.s('235 2.7.0 ok');
    w.c('MAIL FROM:<ann@alpha.test>');
    t.end();
    const text = out.lines().map((l) => `${l.dir === 'client' ? 'C' : 'S'} ${l.text}`);
    expect(text).toEqual([
      'C AUTH PLAIN ****', 'S 235 2.7.0 ok',
      'C AUTH LOGIN', 'S 334 VXNlcm5hbWU6', 'C ****', 'S 334 UGFzc3dvcmQ6', 'C ****', 'S 235 2.7.0 ok',
      'C AUTH XOAUTH2 ****', 'S 235 2.7.0 ok',
      'C MAIL FROM:<ann@alpha.test>',
    ]);
    expect(JSON.stringify(out.chunks)).not.toMatch(/czNjcmV0|YW5u|AGFubgBzM2NyZXQ|dXNlcj1hbm4/);
  });

  it('stores lines up to the size cap, then counts them without storing, and says so', () => {
    const out = collect();
    const t = new Transcript({ ...INIT, maxBytes: 100 }, out.sink);
    const w = wire(t);
    w.connected();
    w.s('220 mx.remote.test ESMTP');
    for (let i = 0; i < 20; i++) {
      w.c(`RCPT TO:<user${i}@remote.test>`);
      w.s('250 2.1.5 ok');
    }
    w.c('QUIT');
    t.end();
    const final = out.chunks.at(-1)!.connection;
    const stored = out.lines();
    const storedBytes = stored.reduce((n, l) => n + Buffer.byteLength(l.text), 0);
    expect(final.truncated).toBe(true);
    expect(final.bytesStored).toBe(storedBytes);
    expect(storedBytes).toBeLessThanOrEqual(100);
    expect(stored.length).toBeGreaterThan(2);
    expect(stored.length).toBeLessThan(42);
    // Counted: greeting, 20 × (RCPT + reply), QUIT; commands are the client's only.
    expect(final.lines).toBe(42);
    expect(final.commands).toBe(21);
    expect(final.ended).toBe('quit');
    // No line after the cut is stored, however short.
    expect(stored.map((l) => l.seq)).toEqual(stored.map((_, i) => i + 1));
  });

  it('gives timestamps that never go back and a sequence that always goes up, even when the clock does', () => {
    const times = [1000, 1005, 1003, 990, 1010, 1010, 1020];
    let i = 0;
    const out = collect();
    const t = new Transcript(INIT, out.sink, () => times[Math.min(i++, times.length - 1)]);
    const w = wire(t);
    w.connected();
    w.s('220 hi');
    w.c('EHLO out.ichidan.test');
    w.s('250 ok');
    w.c('QUIT');
    w.s('221 bye');
    t.end();
    const lines = out.lines();
    expect(lines.map((l) => l.at)).toEqual([1005, 1005, 1005, 1010, 1010]);
    expect(out.chunks.at(-1)!.connection.endedAt).toBe(1020);
    for (let k = 1; k < lines.length; k++) expect(lines[k].seq).toBeGreaterThan(lines[k - 1].seq);
  });

  it('records a session opened for a message that never connected, tied to it, with the reason in words', () => {
    const out = collect();
    const t = new Transcript({ ...INIT, openedFor: { queueId: 'Q1', tenant: 'acme', recipients: ['a@remote.test'] } }, out.sink);
    t.logger.error({ tnx: 'network', err: Object.assign(new Error('connect ECONNREFUSED 127.0.0.1:25'), { code: 'ECONNREFUSED' }) }, 'refused');
    t.end();
    expect(out.chunks).toHaveLength(1);
    expect(out.chunks[0].connection).toMatchObject({ id: t.id, address: '127.0.0.1', port: 25, ended: 'connection refused (ECONNREFUSED)', messages: 1, localAddress: null });
    expect(out.chunks[0].messages).toMatchObject([{ n: 1, queueId: 'Q1', tenant: 'acme', recipients: ['a@remote.test'] }]);
    expect(out.chunks[0].lines).toEqual([]);
  });

  it('names a broken TLS handshake and a timeout as such', () => {
    expect(failureReason(Object.assign(new Error('wrong version number'), { code: 'ETLS', duringTls: true }))).toBe('TLS handshake failed: wrong version number');
    expect(failureReason(Object.assign(new Error('TLS handshake timed out'), { code: 'ETIMEDOUT', duringTls: true }))).toBe('TLS handshake timed out');
    expect(failureReason(Object.assign(new Error('connection to 192.0.2.1:25 timed out'), { code: 'ETIMEDOUT' }))).toBe('connection to 192.0.2.1:25 timed out');
    expect(failureReason(Object.assign(new Error('connect EHOSTUNREACH'), { code: 'EHOSTUNREACH' }))).toBe('host unreachable (EHOSTUNREACH)');
  });

  it('records nothing for a session that never connected', () => {
    const out = collect();
    const t = new Transcript(INIT, out.sink);
    t.logger.error({ tnx: 'network', err: new Error('connect ECONNREFUSED') }, 'refused');
    t.end();
    expect(out.chunks).toEqual([]);
  });
});

describe('transcript recorder on a real session', () => {
  it('records the dialogue, STARTTLS, masked AUTH, and of DATA only its size, ties lines to the queue id', async () => {
    const received: string[] = [];
    const server = new SMTPServer({
      logger: false, disableReverseLookup: true, allowInsecureAuth: true, authMethods: ['PLAIN', 'LOGIN'],
      onAuth: (auth, _s, cb) => cb(null, { user: auth.username }),
      onData(stream, _s, cb) {
        const chunks: Buffer[] = [];
        stream.on('data', (c: Buffer) => chunks.push(c));
        stream.on('end', () => { received.push(Buffer.concat(chunks).toString()); cb(null, 'queued'); });
      },
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
    const port = (server.server.address() as { port: number }).port;
    const out = collect();
    const t = new Transcript({ ...INIT, port }, out.sink);
    const logger = {
      ...t.logger,
      // A logger that also sees the body as `tnx: 'message'` debug lines must still not keep it.
      info: (entry: Record<string, unknown>, message?: string, ...args: unknown[]) => {
        if (entry.tnx === 'message') t.logger.debug({ tnx: 'message' }, body);
        t.logger.info(entry, message, ...args);
      },
    };
    const conn = new SmtpConnection({ address: '127.0.0.1', port, connectTimeout: 5_000, replyTimeout: 5_000, logger });
    t.watch(conn);
    const body = 'Subject: secret plans\r\n\r\nTHE-BODY-MARKER line\r\n.dotted line\r\n';
    try {
      await conn.connect();
      expect(await conn.handshake({ name: INIT.helo, lmtp: false, starttls: 'always', tls: { rejectUnauthorized: false } })).toBeNull();
      expect((await conn.command(`AUTH PLAIN ${Buffer.from('\u0000ann\u0000hunter2-password').toString('base64')}`)).code).toBe(235);
      t.carry('0QUEUEID00000001', 'alpha', ['bob@remote.test']);
      const replies = await sendEnvelope(conn, { sender: 'ann@alpha.test', recipients: [{ address: 'bob@remote.test', notify: null, orcpt: null }], size: 0, body8bit: false, ret: null, envid: null });
      expect(replies.data?.code).toBe(354);
      expect((await conn.body(Readable.from([body]), 1))[0].code).toBe(250);
      t.release();
      await new Promise<void>((resolve) => { conn.once('end', () => resolve()); void conn.quit(); });
    } finally {
      await new Promise<void>((r) => server.close(() => r()));
    }
    expect(received[0]).toContain('THE-BODY-MARKER');
    const all = JSON.stringify(out.chunks);
    expect(all).not.toContain('THE-BODY-MARKER');
    expect(all).not.toContain('secret plans');
    expect(all).not.toContain(Buffer.from('hunter2-password').toString('base64'));
    expect(all).not.toContain(Buffer.from('\u0000ann\u0000hunter2-password').toString('base64'));

    const lines = out.lines();
    const text = lines.map((l) => `${l.dir === 'client' ? 'C' : 'S'} ${l.text.split('\n')[0]}`);
    const at = (prefix: string) => text.findIndex((l) => l.startsWith(prefix));
    expect(text[0]).toMatch(/^S 220 /);
    expect(at('C STARTTLS')).toBeGreaterThan(0);
    expect(text[at('C STARTTLS') + 1]).toMatch(/^S 220 /);
    expect(text).toContain('C AUTH PLAIN ****');
    // PIPELINING: MAIL, RCPT and DATA go out together, their replies follow in order.
    const data = at('C DATA');
    const go = at('S 354');
    expect(go).toBeGreaterThan(data);
    expect(text.slice(go, go + 3).map((l) => l.replace(/\d+/, 'N'))).toEqual(['S N End data with <CR><LF>.<CR><LF>', 'C <N bytes>', 'S N queued']);
    expect(text.filter((l) => l.startsWith('C <'))).toHaveLength(1);
    const size = Number(/<(\d+) bytes>/.exec(text[go + 1])![1]);
    expect(size).toBeGreaterThanOrEqual(Buffer.byteLength(body));
    expect(text.at(-2)).toBe('C QUIT');
    expect(text.at(-1)).toMatch(/^S 221 /);
    // Lines of the transaction carry its queue id; the handshake and the QUIT do not.
    const mail = at('C MAIL FROM');
    expect(lines.slice(mail, go + 3).every((l) => l.queueId === '0QUEUEID00000001')).toBe(true);
    expect(lines.slice(0, mail).every((l) => l.queueId === null)).toBe(true);
    expect(lines.at(-1)!.queueId).toBeNull();
    for (let k = 1; k < lines.length; k++) {
      expect(lines[k].seq).toBeGreaterThan(lines[k - 1].seq);
      expect(lines[k].at).toBeGreaterThanOrEqual(lines[k - 1].at);
    }
    const final = out.chunks.at(-1)!.connection;
    expect(final.tls).toMatch(/^TLSv1\.[23] /);
    expect(final.ended).toBe('quit');
    expect(final.endedAt).not.toBeNull();
    expect(final.messages).toBe(1);
    expect(final.localAddress).toBe('127.0.0.1');
    expect(out.chunks.flatMap((c) => c.messages)).toEqual([expect.objectContaining({ n: 1, queueId: '0QUEUEID00000001', tenant: 'alpha', recipients: ['bob@remote.test'] })]);
  });
});
