// The transparent proxy relays a pipelined client's group pipelined (RFC 2920): a destination that
// offers PIPELINING receives MAIL, RCPT and DATA in one write; one that does not gets one command at a
// time, each after the reply to the one before. Replies go back as the destination gave them
// (multi-line, 251, 252); a recipient refused by the proxy in the middle of a group never reaches the
// destination; a destination that drops mid-group gives the client 4xx and delivers nothing; the
// transcript holds every line of the group, in order, tied to its transaction. A client that waits for
// each reply gets the destination's own reply to its MAIL FROM once the site can be named without a
// recipient: in a later transaction, or in the first once a route has named the destination's address.
import { join } from 'node:path';
import { createServer, type Socket } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { adminRequest } from './helpers/app.js';
import { cleanup, proxy, runCleanup, type OriginalDst } from './helpers/proxy-app.js';
import { RawSmtp } from './helpers/raw-smtp.js';
import { readTranscriptTables } from './helpers/records.js';

afterEach(runCleanup);

interface PeerOptions {
  host: string;
  pipelining: boolean;
  /** The raw reply to MAIL FROM:<address> (CRLF-terminated lines); undefined: 250 2.1.0. */
  mail?: (address: string) => string | undefined;
  /** The raw reply to RCPT TO:<address> (CRLF-terminated lines); undefined: 250 2.1.5. */
  rcpt?: (address: string) => string | undefined;
  /** The raw reply after the final dot. */
  final?: string;
  /** A command chunk matching this closes the connection before any reply. */
  dropOn?: RegExp;
  /** The raw reply to DATA when there are recipients; undefined: 354. */
  data?: string;
  /** The reply to MAIL FROM comes this much later (every later reply after it, in order). */
  mailDelayMs?: number;
}

/**
 * A scripted destination: it answers every command line of a chunk in order, keeps each chunk of
 * commands as it arrived (one chunk per write on loopback), and, without PIPELINING, answers
 * after 30 ms and notes a command that came while a reply was still owed.
 */
async function peer(opts: PeerOptions) {
  const state = {
    chunks: [] as string[],
    /** Connections closed by the proxy while in DATA (after a 354, before any final dot). */
    closedInData: 0,
    messages: [] as Array<{ rcpt: string[]; body: string }>,
    overlap: false,
    endpoint: null as unknown as OriginalDst,
  };
  const sockets = new Set<Socket>();
  const server = createServer((s) => {
    sockets.add(s);
    s.on('close', () => {
      sockets.delete(s);
      if (inData) state.closedInData++;
    });
    s.on('error', () => undefined);
    let buffer = '';
    let inData = false;
    let owed = 0;
    let rcpt: string[] = [];
    let inOrder = Promise.resolve();
    const say = (text: string, delayMs = 0) => {
      if (opts.mailDelayMs !== undefined) {
        inOrder = inOrder.then(() => new Promise((r) => setTimeout(r, delayMs))).then(() => { if (!s.destroyed) s.write(text); });
        return;
      }
      if (opts.pipelining) return void s.write(text);
      owed++;
      setTimeout(() => { owed--; if (!s.destroyed) s.write(text); }, 30);
    };
    s.write('220 peer.test ESMTP\r\n');
    s.on('data', (d: Buffer) => {
      const chunk = d.toString('latin1');
      if (!inData) {
        state.chunks.push(chunk);
        if (owed > 0) state.overlap = true;
        if (opts.dropOn?.test(chunk)) return void s.destroy();
      }
      buffer += chunk;
      for (;;) {
        if (inData) {
          const end = buffer.indexOf('\r\n.\r\n');
          if (end < 0) return;
          state.messages.push({ rcpt, body: buffer.slice(0, end + 2) });
          buffer = buffer.slice(end + 5);
          inData = false;
          rcpt = [];
          say(opts.final ?? '250 2.0.0 Ok: taken\r\n');
          continue;
        }
        const nl = buffer.indexOf('\r\n');
        if (nl < 0) return;
        const line = buffer.slice(0, nl);
        buffer = buffer.slice(nl + 2);
        const verb = line.slice(0, 4).toUpperCase();
        if (verb === 'EHLO') say(`250-peer.test\r\n${opts.pipelining ? '250-PIPELINING\r\n' : ''}250 8BITMIME\r\n`);
        else if (verb === 'MAIL') say(opts.mail?.(/<([^>]*)>/.exec(line)![1]) ?? '250 2.1.0 sender ok\r\n', opts.mailDelayMs);
        else if (verb === 'RCPT') {
          const address = /<([^>]*)>/.exec(line)![1];
          const reply = opts.rcpt?.(address) ?? '250 2.1.5 recipient ok\r\n';
          if (reply.startsWith('25')) rcpt.push(address);
          say(reply);
        } else if (verb === 'DATA') {
          if (rcpt.length === 0) { say('554 5.5.1 no valid recipients\r\n'); continue; }
          if (opts.data) { say(opts.data); continue; }
          inData = true;
          say('354 go ahead\r\n');
        } else if (verb === 'QUIT') { say('221 bye\r\n'); s.end(); return; }
        else if (verb === 'RSET') { rcpt = []; say('250 2.0.0 reset\r\n'); }
        else say('250 ok\r\n');
      }
    });
  });
  await new Promise<void>((r) => server.listen(0, opts.host, () => r()));
  cleanup.push(() => new Promise((r) => { server.close(r); for (const s of sockets) s.destroy(); }));
  state.endpoint = { address: opts.host, port: (server.address() as { port: number }).port, family: 4 };
  return state;
}

/** The chunks of commands of transactions (the handshake's left out). */
const transactionChunks = (chunks: string[]) => chunks.filter((c) => /^(RSET|MAIL|RCPT|DATA)/m.test(c));

/** A client at the point of a transaction: greeted, EHLO said. */
async function client(port: number, from?: string): Promise<RawSmtp> {
  const c = await RawSmtp.open(port, '127.0.0.1', from);
  await c.reply();
  expect(await c.command('EHLO legacy.test')).toMatch(/^250/);
  return c;
}

/** Replies as the client received them, byte for byte. */
async function rawReplies(c: RawSmtp, n: number): Promise<string[]> {
  const out: string[] = [];
  for (let i = 0; i < n; i++) out.push((await c.reply()).join('\r\n') + '\r\n');
  return out;
}

const BODY = 'Subject: pipelined\r\n\r\nhello\r\n';

describe('transparent proxy (loopback): pipelined relay', () => {
  it('sends a pipelined MAIL, RCPT and DATA to a destination offering PIPELINING in one write, and the transaction goes through', async () => {
    const dest = await peer({ host: '127.0.0.81', pipelining: true });
    const t = await proxy(() => dest.endpoint);
    const c = await client(t.port('proxy'));
    c.send('MAIL FROM:<a@legacy.test>\r\nRCPT TO:<x@dest.test>\r\nDATA\r\n');
    const [mail, rcpt, data] = await rawReplies(c, 3);
    expect(mail).toMatch(/^250 /);
    expect(rcpt).toBe('250 2.1.5 recipient ok\r\n');
    expect(data).toMatch(/^354 /);
    c.send(`${BODY}.\r\n`);
    expect((await rawReplies(c, 1))[0]).toBe('250 2.0.0 Ok: taken\r\n');
    expect(transactionChunks(dest.chunks)).toEqual(['MAIL FROM:<a@legacy.test>\r\nRCPT TO:<x@dest.test>\r\nDATA\r\n']);
    expect(dest.messages).toEqual([{ rcpt: ['x@dest.test'], body: BODY }]);

    // The next transaction on the same connection: the pooled destination session's RSET goes in the same write.
    c.send('MAIL FROM:<b@legacy.test>\r\nRCPT TO:<y@dest.test>\r\nDATA\r\n');
    expect((await rawReplies(c, 3)).map((r) => r.slice(0, 3))).toEqual(['250', '250', '354']);
    c.send(`${BODY}.\r\n`);
    expect((await rawReplies(c, 1))[0]).toMatch(/^250 /);
    expect(transactionChunks(dest.chunks).slice(1)).toEqual(['RSET\r\nMAIL FROM:<b@legacy.test>\r\nRCPT TO:<y@dest.test>\r\nDATA\r\n']);
    c.socket.destroy();
  });

  it('gives a destination without PIPELINING one command at a time, each after the reply to the one before', async () => {
    const dest = await peer({ host: '127.0.0.82', pipelining: false });
    const t = await proxy(() => dest.endpoint);
    const c = await client(t.port('proxy'));
    c.send('MAIL FROM:<a@legacy.test>\r\nRCPT TO:<x@dest.test>\r\nRCPT TO:<z@dest.test>\r\nDATA\r\n');
    expect((await rawReplies(c, 4)).map((r) => r.slice(0, 3))).toEqual(['250', '250', '250', '354']);
    c.send(`${BODY}.\r\n`);
    expect((await rawReplies(c, 1))[0]).toMatch(/^250 /);
    expect(transactionChunks(dest.chunks)).toEqual(['MAIL FROM:<a@legacy.test>\r\n', 'RCPT TO:<x@dest.test>\r\n', 'RCPT TO:<z@dest.test>\r\n', 'DATA\r\n']);
    expect(dest.overlap).toBe(false);
    expect(dest.messages).toEqual([{ rcpt: ['x@dest.test', 'z@dest.test'], body: BODY }]);
    c.socket.destroy();
  });

  it('passes multi-line replies, 251 and 252 back byte for byte, refusals and the final reply too', async () => {
    const replies: Record<string, string> = {
      'multi@dest.test': '250-2.1.5 first line\r\n250-second line\r\n250 2.1.5 last line\r\n',
      'fwd@dest.test': '251 2.1.5 User not local; will forward to <x@elsewhere.test>\r\n',
      'vrfy@dest.test': '252 2.1.5 Cannot VRFY user, but will accept message\r\n',
      'no@dest.test': '550-5.1.1 The email account that you tried to reach does not exist.\r\n550 5.1.1 Please try again.\r\n',
    };
    const final = '250-2.0.0 queued as ABC123\r\n250 2.0.0 thank you\r\n';
    const dest = await peer({ host: '127.0.0.83', pipelining: true, rcpt: (a) => replies[a], final });
    const t = await proxy(() => dest.endpoint);
    const c = await client(t.port('proxy'));
    c.send('MAIL FROM:<a@legacy.test>\r\nRCPT TO:<multi@dest.test>\r\nRCPT TO:<fwd@dest.test>\r\nRCPT TO:<vrfy@dest.test>\r\nRCPT TO:<no@dest.test>\r\nDATA\r\n');
    const got = await rawReplies(c, 6);
    expect(got.slice(1, 5)).toEqual([replies['multi@dest.test'], replies['fwd@dest.test'], replies['vrfy@dest.test'], replies['no@dest.test']]);
    expect(got[5]).toMatch(/^354 /);
    c.send(`${BODY}.\r\n`);
    expect((await rawReplies(c, 1))[0]).toBe(final);
    expect(dest.messages).toEqual([{ rcpt: ['multi@dest.test', 'fwd@dest.test', 'vrfy@dest.test'], body: BODY }]);
    c.socket.destroy();
  });

  it('relays a pipelined group\'s recipients for one domain in its one write, and passes each reply back in order', async () => {
    const refusal = '550-5.1.1 no such user\r\n550 5.1.1 here\r\n';
    const dest = await peer({ host: '127.0.0.95', pipelining: true, rcpt: (a) => (a === '2@dest.test' ? refusal : undefined) });
    const t = await proxy(() => dest.endpoint);
    const c = await client(t.port('proxy'));
    c.send('MAIL FROM:<a@legacy.test>\r\nRCPT TO:<1@dest.test>\r\nRCPT TO:<2@dest.test>\r\nRCPT TO:<3@dest.test> NOTIFY=FAILURE\r\nDATA\r\n');
    const got = await rawReplies(c, 5);
    expect(got.slice(1, 4)).toEqual(['250 2.1.5 recipient ok\r\n', refusal, '250 2.1.5 recipient ok\r\n']);
    expect(got[4]).toMatch(/^354 /);
    c.send(`${BODY}.\r\n`);
    expect(await rawReplies(c, 1)).toEqual(['250 2.0.0 Ok: taken\r\n']);
    expect(transactionChunks(dest.chunks)).toEqual(['MAIL FROM:<a@legacy.test>\r\nRCPT TO:<1@dest.test>\r\nRCPT TO:<2@dest.test>\r\nRCPT TO:<3@dest.test>\r\nDATA\r\n']);
    expect(dest.messages).toEqual([{ rcpt: ['1@dest.test', '3@dest.test'], body: BODY }]);

    // The next transaction on the same connection: the pooled session's RSET, then the group, in one write.
    c.send('MAIL FROM:<b@legacy.test>\r\nRCPT TO:<4@dest.test>\r\nRCPT TO:<5@dest.test>\r\nDATA\r\n');
    expect((await rawReplies(c, 4)).map((r) => r.slice(0, 3))).toEqual(['250', '250', '250', '354']);
    c.send(`${BODY}.\r\n`);
    expect((await rawReplies(c, 1))[0]).toMatch(/^250 /);
    expect(transactionChunks(dest.chunks).slice(1)).toEqual(['RSET\r\nMAIL FROM:<b@legacy.test>\r\nRCPT TO:<4@dest.test>\r\nRCPT TO:<5@dest.test>\r\nDATA\r\n']);
    expect(dest.messages.at(-1)).toEqual({ rcpt: ['4@dest.test', '5@dest.test'], body: BODY });
    c.socket.destroy();
  });

  it('relays a recipient of another domain in a step of its own, and those after it in the next', async () => {
    const dest = await peer({ host: '127.0.0.96', pipelining: true });
    const t = await proxy(() => dest.endpoint);
    const c = await client(t.port('proxy'));
    c.send('MAIL FROM:<a@legacy.test>\r\nRCPT TO:<1@dest.test>\r\nRCPT TO:<2@other.test>\r\nRCPT TO:<3@dest.test>\r\nRCPT TO:<4@dest.test>\r\nDATA\r\n');
    expect((await rawReplies(c, 6)).map((r) => r.slice(0, 3))).toEqual(['250', '250', '250', '250', '250', '354']);
    c.send(`${BODY}.\r\n`);
    expect((await rawReplies(c, 1))[0]).toMatch(/^250 /);
    expect(transactionChunks(dest.chunks)).toEqual([
      'MAIL FROM:<a@legacy.test>\r\nRCPT TO:<1@dest.test>\r\n', 'RCPT TO:<2@other.test>\r\n', 'RCPT TO:<3@dest.test>\r\nRCPT TO:<4@dest.test>\r\nDATA\r\n',
    ]);
    expect(dest.messages).toEqual([{ rcpt: ['1@dest.test', '2@other.test', '3@dest.test', '4@dest.test'], body: BODY }]);
    c.socket.destroy();
  });

  it('delivers nothing, and answers the data 451, when a recipient relayed ahead of its turn is refused once its turn comes', async () => {
    const dest = await peer({ host: '127.0.0.97', pipelining: true, mailDelayMs: 800 });
    const t = await proxy(() => dest.endpoint, () => ({
      trustedNetworks: [],
      tenants: { shop: { networks: ['127.0.0.1/32'], suppression: { action: 'bounce' } } },
    }));
    const c = await client(t.port('proxy'));
    c.send('MAIL FROM:<a@legacy.test>\r\nRCPT TO:<x@dest.test>\r\nRCPT TO:<y@dest.test>\r\nDATA\r\n');
    // y went ahead with x (and DATA with them); while the destination takes its time, y is suppressed.
    for (const until = Date.now() + 5000; !transactionChunks(dest.chunks).some((ch) => ch.includes('RCPT TO:<y@dest.test>')) && Date.now() < until;) await new Promise((r) => setTimeout(r, 10));
    expect(transactionChunks(dest.chunks)).toEqual(['MAIL FROM:<a@legacy.test>\r\nRCPT TO:<x@dest.test>\r\nRCPT TO:<y@dest.test>\r\nDATA\r\n']);
    const added = await adminRequest(join(t.dataDir, 'admin.sock'), 'POST', '/v1/suppression/add', { tenant: 'shop', address: 'y@dest.test' });
    expect(added.status).toBe(200);
    const got = await rawReplies(c, 4);
    // The destination took y, the client was refused it: this transaction there is not the client's.
    expect(got.map((r) => r.slice(0, 3))).toEqual(['250', '250', '550', '354']);
    c.send(`${BODY}.\r\n`);
    expect((await rawReplies(c, 1))[0]).toMatch(/^451 4\.4\.2 destination failed: a recipient relayed ahead of its turn was not the client's/);
    for (const until = Date.now() + 10_000; dest.closedInData === 0 && Date.now() < until;) await new Promise((r) => setTimeout(r, 50));
    expect(dest.closedInData).toBe(1);
    expect(dest.messages).toEqual([]);
    // The client's next transaction starts afresh and goes through.
    c.send('MAIL FROM:<b@legacy.test>\r\nRCPT TO:<z@dest.test>\r\nDATA\r\n');
    expect((await rawReplies(c, 3)).map((r) => r.slice(0, 3))).toEqual(['250', '250', '354']);
    c.send(`${BODY}.\r\n`);
    expect((await rawReplies(c, 1))[0]).toMatch(/^250 /);
    expect(dest.messages.map((m) => m.rcpt)).toEqual([['z@dest.test']]);
    c.socket.destroy();
  });

  it('refuses a suppressed recipient in the middle of a pipelined group without asking the destination, and relays the rest', async () => {
    const dest = await peer({ host: '127.0.0.84', pipelining: true });
    const t = await proxy(() => dest.endpoint, () => ({
      trustedNetworks: [],
      tenants: { shop: { networks: ['127.0.0.1/32'], suppression: { action: 'bounce' } } },
    }));
    const added = await adminRequest(join(t.dataDir, 'admin.sock'), 'POST', '/v1/suppression/add', { tenant: 'shop', address: 'gone@dest.test' });
    expect(added.status).toBe(200);
    const c = await client(t.port('proxy'));
    c.send('MAIL FROM:<a@legacy.test>\r\nRCPT TO:<one@dest.test>\r\nRCPT TO:<gone@dest.test>\r\nRCPT TO:<two@dest.test>\r\nDATA\r\n');
    const got = await rawReplies(c, 5);
    expect(got.map((r) => r.slice(0, 3))).toEqual(['250', '250', '550', '250', '354']);
    expect(got[2]).toMatch(/^550 5\.1\.1 <gone@dest\.test>: recipient suppressed/);
    c.send(`${BODY}.\r\n`);
    expect((await rawReplies(c, 1))[0]).toMatch(/^250 /);
    expect(dest.messages).toEqual([{ rcpt: ['one@dest.test', 'two@dest.test'], body: BODY }]);
    expect(dest.chunks.join('')).not.toMatch(/gone@/);
    // The recipients before it went in the first group, those after it with DATA, as the client sent them.
    expect(transactionChunks(dest.chunks)).toEqual(['MAIL FROM:<a@legacy.test>\r\nRCPT TO:<one@dest.test>\r\n', 'RCPT TO:<two@dest.test>\r\nDATA\r\n']);
    c.socket.destroy();
  });

  it('gives the client 451 when the destination drops in the middle of a group, and nothing is delivered', async () => {
    const dest = await peer({ host: '127.0.0.85', pipelining: true, dropOn: /^RCPT/m });
    const t = await proxy(() => dest.endpoint);
    const c = await client(t.port('proxy'));
    c.send('MAIL FROM:<a@legacy.test>\r\nRCPT TO:<x@dest.test>\r\nDATA\r\n');
    const got = await rawReplies(c, 3);
    expect(got[0]).toMatch(/^250 /);
    expect(got[1]).toMatch(/^451 4\.4\.2 destination failed: 127\.0\.0\.85:\d+: ECONNRESET/);
    // smtp-server has no recipient left for DATA: nothing reaches anyone.
    expect(got[2]).toMatch(/^503 /);
    expect(dest.messages).toEqual([]);
    c.socket.destroy();
  });

  it('passes the destination\'s refusal of a DATA relayed in the group back as the final reply, and nothing is delivered', async () => {
    const dest = await peer({ host: '127.0.0.87', pipelining: true, data: '451-4.3.0 not now\r\n451 4.3.0 try again later\r\n' });
    const t = await proxy(() => dest.endpoint);
    const c = await client(t.port('proxy'));
    c.send('MAIL FROM:<a@legacy.test>\r\nRCPT TO:<x@dest.test>\r\nDATA\r\n');
    expect((await rawReplies(c, 3)).map((r) => r.slice(0, 3))).toEqual(['250', '250', '354']);
    c.send(`${BODY}.\r\n`);
    expect((await rawReplies(c, 1))[0]).toBe('451-4.3.0 not now\r\n451 4.3.0 try again later\r\n');
    expect(transactionChunks(dest.chunks)).toEqual(['MAIL FROM:<a@legacy.test>\r\nRCPT TO:<x@dest.test>\r\nDATA\r\n']);
    expect(dest.messages).toEqual([]);
    c.socket.destroy();
  });

  it('closes the destination without a final dot when the client leaves after a group whose DATA went ahead', async () => {
    const dest = await peer({ host: '127.0.0.88', pipelining: true });
    const t = await proxy(() => dest.endpoint);
    const c = await client(t.port('proxy'));
    c.send('MAIL FROM:<a@legacy.test>\r\nRCPT TO:<x@dest.test>\r\nDATA\r\n');
    expect((await rawReplies(c, 3)).map((r) => r.slice(0, 3))).toEqual(['250', '250', '354']);
    c.send('Subject: half\r\n\r\nthe client goes before the end');
    c.socket.destroy();
    for (const until = Date.now() + 10_000; dest.closedInData === 0 && Date.now() < until;) await new Promise((r) => setTimeout(r, 50));
    expect(dest.closedInData).toBe(1);
    expect(dest.messages).toEqual([]);
  });

  it('closes the destination without a final dot when the client leaves at the 354 of a DATA that went ahead, before any byte of the message', async () => {
    const dest = await peer({ host: '127.0.0.89', pipelining: true });
    const t = await proxy(() => dest.endpoint);
    const c = await client(t.port('proxy'));
    c.send('MAIL FROM:<a@legacy.test>\r\nRCPT TO:<x@dest.test>\r\nDATA\r\n');
    expect((await rawReplies(c, 3)).map((r) => r.slice(0, 3))).toEqual(['250', '250', '354']);
    c.socket.destroy();
    for (const until = Date.now() + 10_000; dest.closedInData === 0 && Date.now() < until;) await new Promise((r) => setTimeout(r, 50));
    expect(dest.closedInData).toBe(1);
    expect(dest.messages).toEqual([]);
  });

  it('answers a later MAIL FROM of a client that waits for each reply with the destination\'s own reply, a refusal too', async () => {
    const dest = await peer({ host: '127.0.0.89', pipelining: true, mail: (a) => (a === 'no@legacy.test' ? '550-5.7.1 not this sender\r\n550 5.7.1 see you\r\n' : undefined) });
    const t = await proxy(() => dest.endpoint);
    const c = await client(t.port('proxy'));
    const transaction = async (from: string, to: string) => {
      c.send(`MAIL FROM:<${from}>\r\n`);
      const [mail] = await rawReplies(c, 1);
      c.send(`RCPT TO:<${to}>\r\n`);
      expect(await rawReplies(c, 1)).toEqual(['250 2.1.5 recipient ok\r\n']);
      c.send('DATA\r\n');
      expect((await rawReplies(c, 1))[0]).toMatch(/^354 /);
      c.send(`${BODY}.\r\n`);
      expect(await rawReplies(c, 1)).toEqual(['250 2.0.0 Ok: taken\r\n']);
      return mail;
    };
    // The first: no destination site is known before a recipient names it, so the proxy answers.
    expect(await transaction('a@legacy.test', 'x@dest.test')).toBe('250 2.1.0 Ok\r\n');
    // Later ones: the destination's reply, its MAIL sent (after the pooled session's RSET) before any RCPT.
    expect(await transaction('b@legacy.test', 'y@dest.test')).toBe('250 2.1.0 sender ok\r\n');
    expect(transactionChunks(dest.chunks).slice(3)).toEqual(['RSET\r\nMAIL FROM:<b@legacy.test>\r\n', 'RCPT TO:<y@dest.test>\r\n', 'DATA\r\n']);
    c.send('MAIL FROM:<no@legacy.test>\r\n');
    expect(await rawReplies(c, 1)).toEqual(['550-5.7.1 not this sender\r\n550 5.7.1 see you\r\n']);
    // The refused sender's transaction never began: the client's next one goes through.
    expect(await transaction('c@legacy.test', 'z@dest.test')).toBe('250 2.1.0 sender ok\r\n');
    expect(dest.messages.map((m) => m.rcpt)).toEqual([['x@dest.test'], ['y@dest.test'], ['z@dest.test']]);
    c.socket.destroy();
  });

  describe('the first MAIL FROM of a connection, once the destination\'s address is known from a route', () => {
    /** RCPT, DATA and the message, each sent after the reply to the one before, and the peer's replies to them. */
    async function oneByOne(c: RawSmtp, rcpt: string): Promise<void> {
      c.send(`RCPT TO:<${rcpt}>\r\n`);
      expect(await rawReplies(c, 1)).toEqual(['250 2.1.5 recipient ok\r\n']);
      c.send('DATA\r\n');
      expect((await rawReplies(c, 1))[0]).toMatch(/^354 /);
      c.send(`${BODY}.\r\n`);
      expect(await rawReplies(c, 1)).toEqual(['250 2.0.0 Ok: taken\r\n']);
    }

    /** A proxy whose route for dest.test names the peer, and one transaction through it to teach the address's site. */
    async function known(dest: Awaited<ReturnType<typeof peer>>) {
      const t = await proxy(() => dest.endpoint, () => ({ routes: { 'dest.test': { host: dest.endpoint.address, port: dest.endpoint.port } } }));
      const first = await client(t.port('proxy'));
      // Nothing is known of the address before a recipient's route names it: the proxy answers.
      first.send('MAIL FROM:<warm@legacy.test>\r\n');
      expect(await rawReplies(first, 1)).toEqual(['250 2.1.0 Ok\r\n']);
      await oneByOne(first, 'w@dest.test');
      first.send('QUIT\r\n');
      await rawReplies(first, 1);
      first.socket.destroy();
      dest.chunks.length = 0;
      return t;
    }

    it('gives a client that waits for the reply the destination\'s own refusal of the sender, multi-line, as it came', async () => {
      const refusal = '550-5.7.1 this sender is not welcome here\r\n550 5.7.1 see https://dest.test/policy\r\n';
      const dest = await peer({ host: '127.0.0.91', pipelining: true, mail: (a) => (a === 'no@legacy.test' ? refusal : undefined) });
      const t = await known(dest);
      const c = await client(t.port('proxy'));
      c.send('MAIL FROM:<no@legacy.test>\r\n');
      expect(await rawReplies(c, 1)).toEqual([refusal]);
      // The MAIL FROM went alone, on the pooled destination session shown alive by its RSET.
      expect(transactionChunks(dest.chunks)).toEqual(['RSET\r\nMAIL FROM:<no@legacy.test>\r\n']);
      // The refused sender's transaction never began: the client's next one goes through.
      c.send('MAIL FROM:<yes@legacy.test>\r\n');
      expect(await rawReplies(c, 1)).toEqual(['250 2.1.0 sender ok\r\n']);
      await oneByOne(c, 'x@dest.test');
      expect(dest.messages.map((m) => m.rcpt)).toEqual([['w@dest.test'], ['x@dest.test']]);
      c.socket.destroy();
    });

    it('gives a client that waits for the reply the destination\'s own 250, then relays its RCPT and DATA one by one', async () => {
      const dest = await peer({ host: '127.0.0.92', pipelining: true, mail: () => '250 2.1.0 <a@legacy.test> sender looks fine\r\n' });
      const t = await known(dest);
      const c = await client(t.port('proxy'));
      c.send('MAIL FROM:<a@legacy.test>\r\n');
      expect(await rawReplies(c, 1)).toEqual(['250 2.1.0 <a@legacy.test> sender looks fine\r\n']);
      await oneByOne(c, 'x@dest.test');
      expect(transactionChunks(dest.chunks)).toEqual(['RSET\r\nMAIL FROM:<a@legacy.test>\r\n', 'RCPT TO:<x@dest.test>\r\n', 'DATA\r\n']);
      expect(dest.messages.map((m) => m.rcpt)).toEqual([['w@dest.test'], ['x@dest.test']]);
      c.socket.destroy();
    });

    it('still answers a pipelining client\'s first MAIL FROM itself and relays its group in one write', async () => {
      const dest = await peer({ host: '127.0.0.93', pipelining: true });
      const t = await known(dest);
      const c = await client(t.port('proxy'));
      c.send('MAIL FROM:<a@legacy.test>\r\nRCPT TO:<x@dest.test>\r\nDATA\r\n');
      const [mail, rcpt, data] = await rawReplies(c, 3);
      expect(mail).toBe('250 2.1.0 Ok\r\n');
      expect(rcpt).toBe('250 2.1.5 recipient ok\r\n');
      expect(data).toMatch(/^354 /);
      c.send(`${BODY}.\r\n`);
      expect(await rawReplies(c, 1)).toEqual(['250 2.0.0 Ok: taken\r\n']);
      expect(transactionChunks(dest.chunks)).toEqual(['RSET\r\nMAIL FROM:<a@legacy.test>\r\nRCPT TO:<x@dest.test>\r\nDATA\r\n']);
      c.socket.destroy();
    });

    it('reads ahead only what smtp-server hands over next: a later write waiting behind it is not taken for it', async () => {
      const dest = await peer({ host: '127.0.0.98', pipelining: true, mailDelayMs: 400 });
      const t = await known(dest);
      const c = await client(t.port('proxy'));
      c.send('MAIL FROM:<a@legacy.test>\r\n');
      // While the destination takes its time over the MAIL FROM, the client's recipients come in two
      // writes, the second repeating a line of the first (a list not freed of duplicates).
      await new Promise((r) => setTimeout(r, 100));
      c.send('RCPT TO:<x@dest.test>\r\nRCPT TO:<y@dest.test>\r\n');
      await new Promise((r) => setTimeout(r, 50));
      c.send('RCPT TO:<x@dest.test>\r\nRCPT TO:<q@dest.test>\r\n');
      expect((await rawReplies(c, 5)).map((r) => r.slice(0, 3))).toEqual(['250', '250', '250', '250', '250']);
      c.send('DATA\r\n');
      expect((await rawReplies(c, 1))[0]).toMatch(/^354 /);
      c.send(`${BODY}.\r\n`);
      expect(await rawReplies(c, 1)).toEqual(['250 2.0.0 Ok: taken\r\n']);
      // Each write's recipients went in a group of their own, as the client sent them.
      expect(transactionChunks(dest.chunks)).toEqual([
        'RSET\r\nMAIL FROM:<a@legacy.test>\r\n', 'RCPT TO:<x@dest.test>\r\nRCPT TO:<y@dest.test>\r\n', 'RCPT TO:<x@dest.test>\r\nRCPT TO:<q@dest.test>\r\n', 'DATA\r\n',
      ]);
      expect(dest.messages.map((m) => m.rcpt)).toEqual([['w@dest.test'], ['x@dest.test', 'y@dest.test', 'x@dest.test', 'q@dest.test']]);
      c.socket.destroy();
    });

    it('leaves the site named from the address when the first recipient\'s route names another, and sends the MAIL FROM again there', async () => {
      const dest = await peer({ host: '127.0.0.94', pipelining: true });
      const t = await known(dest);
      const c = await client(t.port('proxy'));
      c.send('MAIL FROM:<a@legacy.test>\r\n');
      expect(await rawReplies(c, 1)).toEqual(['250 2.1.0 sender ok\r\n']);
      // other.test has no route: its site is the address's own, not the route's the MAIL FROM went on.
      await oneByOne(c, 'x@other.test');
      // The first MAIL FROM was reset where it went; a connection of the recipient's site carried the message.
      expect(transactionChunks(dest.chunks)).toEqual(['RSET\r\nMAIL FROM:<a@legacy.test>\r\n', 'RSET\r\n', 'MAIL FROM:<a@legacy.test>\r\n', 'RCPT TO:<x@other.test>\r\n', 'DATA\r\n']);
      expect(dest.chunks.filter((ch) => ch.startsWith('EHLO'))).toHaveLength(1);
      expect(dest.messages.map((m) => m.rcpt)).toEqual([['w@dest.test'], ['x@other.test']]);
      c.socket.destroy();
    });
  });

  it('records the pipelined group whole in the transcript, in order, tied to its transaction', async () => {
    const dest = await peer({ host: '127.0.0.86', pipelining: true });
    const t = await proxy(() => dest.endpoint);
    const c = await client(t.port('proxy'));
    c.send('MAIL FROM:<tr@legacy.test>\r\nRCPT TO:<x@dest.test>\r\nDATA\r\n');
    await rawReplies(c, 3);
    c.send(`${BODY}.\r\n`);
    await rawReplies(c, 1);
    c.socket.destroy();
    let rows: Array<{ dir: string; text: string; queue_id: string | null }> = [];
    for (const until = Date.now() + 10_000; Date.now() < until; await new Promise((r) => setTimeout(r, 100))) {
      const { commands } = readTranscriptTables(t.dataDir);
      const session = commands.find((l) => l.text === 'MAIL FROM:<tr@legacy.test>')?.connection_id;
      rows = commands.filter((l) => l.connection_id === session);
      if (rows.some((r) => r.text.startsWith('250 2.0.0 Ok: taken'))) break;
    }
    const tx = rows.filter((r) => r.queue_id !== null);
    expect(tx.map((r) => `${r.dir} ${r.text}`)).toEqual([
      'client MAIL FROM:<tr@legacy.test>', 'client RCPT TO:<x@dest.test>', 'client DATA',
      'server 250 2.1.0 sender ok', 'server 250 2.1.5 recipient ok', 'server 354 go ahead',
      `client <${BODY.length + 3} bytes>`, 'server 250 2.0.0 Ok: taken',
    ]);
    expect(new Set(tx.map((r) => r.queue_id)).size).toBe(1);
    // Before the transaction: the handshake, tied to none.
    expect(rows[0]).toMatchObject({ dir: 'server', queue_id: null });
  });
});
