import { Readable } from 'node:stream';
import { SMTPServer, type SMTPServerOptions } from 'smtp-server';
import { afterEach, describe, expect, it } from 'vitest';
import { deliverToHop, type OutboundMessage, type SessionOptions } from './delivery-smtp.js';
import type { HopTls } from './delivery-tls.js';
import { SmtpPool } from './smtp/smtp-pool.js';

const servers: SMTPServer[] = [];
afterEach(async () => {
  for (const s of servers.splice(0)) await new Promise((r) => s.close(() => r(undefined)));
});

interface Seen { mail: Record<string, unknown>; rcpt: Array<{ address: string; args: Record<string, unknown> }>; data: string[] }

/** An smtp-server peer on 127.0.0.1 that records what it was told; `refuse` answers RCPT for chosen addresses. */
async function peer(options: Partial<SMTPServerOptions> = {}, refuse: Record<string, number> = {}): Promise<{ port: number; seen: Seen }> {
  const seen: Seen = { mail: {}, rcpt: [], data: [] };
  const server = new SMTPServer({
    logger: false, disableReverseLookup: true, authOptional: true, hideDSN: false, hideSize: false, size: 100_000,
    onMailFrom(address, _s, cb) { seen.mail = (address.args || {}) as Record<string, unknown>; cb(); },
    onRcptTo(address, _s, cb) {
      seen.rcpt.push({ address: address.address, args: (address.args || {}) as Record<string, unknown> });
      const code = refuse[address.address];
      cb(code ? Object.assign(new Error(`${code === 550 ? '5.1.1 no such user' : '4.2.2 over quota'}`), { responseCode: code }) : undefined);
    },
    onData(stream, session, cb) {
      const chunks: Buffer[] = [];
      stream.on('data', (c: Buffer) => chunks.push(c));
      stream.on('end', () => {
        seen.data.push(Buffer.concat(chunks).toString());
        if (options.lmtp) {
          // LMTP: one answer per accepted recipient, the second one deferred.
          cb(null, session.envelope.rcptTo.map((r, i) => (i === 1 ? Object.assign(new Error('4.2.2 mailbox full'), { responseCode: 452 }) : `${r.address} delivered`)) as never);
        } else {
          cb(null, 'queued as 1');
        }
      });
    },
    ...options,
  } as SMTPServerOptions);
  servers.push(server);
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  return { port: (server.server.address() as { port: number }).port, seen };
}

const opts: SessionOptions = {
  heloName: 'out.ichidan.test', connectTimeout: 5_000, greetingTimeout: 5_000, replyTimeout: 5_000, transcripts: null,
  localAddress: null, pair: 'site\u0000', pool: { maxConnections: 5, messagesPerConnection: 10, idleTimeout: 5_000 }, slowReply: 60_000,
};
const tls = (level: HopTls['level']): HopTls => ({ level, ca: undefined, rule: `TLS policy "x.test" (${level}) for x.test`, audit: null });
const hop = (port: number, protocol: 'smtp' | 'lmtp' = 'smtp') => ({ name: 'mx.x.test', addresses: ['127.0.0.1'], port, protocol });

function message(recipients: Array<{ address: string; notify?: string; orcpt?: string }>, extra: Partial<OutboundMessage> = {}): OutboundMessage {
  const body = 'Subject: t\r\n\r\nhello\r\n';
  return {
    queueId: '0TESTQUEUEID0001', tenant: 'alpha', sender: 'ann@alpha.test', size: body.length, ret: null, envid: null, body8bit: false,
    recipients: recipients.map((r, i) => ({ id: i + 1, address: r.address, notify: r.notify ?? null, orcpt: r.orcpt ?? null })),
    open: () => Readable.from([Buffer.from(body)]),
    ...extra,
  };
}

describe('one transaction toward a hop', () => {
  it('passes SIZE, BODY, RET, ENVID, NOTIFY and ORCPT on; a refused recipient keeps its own reply', async () => {
    const { port, seen } = await peer({}, { 'gone@x.test': 550 });
    const pool = new SmtpPool();
    const msg = message([{ address: 'bob@x.test', notify: 'success,failure', orcpt: 'rfc822;bob+tag@x.test' }, { address: 'gone@x.test', notify: 'success,failure', orcpt: 'rfc822;bob+tag@x.test' }], { ret: 'HDRS', envid: 'ENV 1', body8bit: true });
    const result = await deliverToHop(hop(port), msg, opts, pool, tls('none'));
    await pool.closeAll();
    expect(result.kind).toBe('done');
    if (result.kind !== 'done') return;
    expect(seen.mail).toMatchObject({ SIZE: String(msg.size), BODY: '8BITMIME', RET: 'HDRS', ENVID: 'ENV 1' });
    expect(seen.rcpt[0].args).toMatchObject({ NOTIFY: 'SUCCESS,FAILURE', ORCPT: 'rfc822;bob+tag@x.test' });
    expect(result.outcomes).toEqual([
      expect.objectContaining({ id: 2, verdict: 'bounced', code: 550, status: '5.1.1' }),
      expect.objectContaining({ id: 1, verdict: 'delivered', code: 250, host: `mx.x.test[127.0.0.1]:${port}` }),
    ]);
    expect(seen.data).toHaveLength(1);
  });

  it('takes LMTP answers per recipient after the final dot', async () => {
    const { port } = await peer({ lmtp: true });
    const pool = new SmtpPool();
    const result = await deliverToHop(hop(port, 'lmtp'), message([{ address: 'a@x.test' }, { address: 'b@x.test' }]), opts, pool, tls('none'));
    await pool.closeAll();
    if (result.kind !== 'done') throw new Error(`not done: ${JSON.stringify(result)}`);
    expect(result.outcomes.map((o) => [o.id, o.verdict, o.code])).toEqual([[1, 'delivered', 250], [2, 'deferred', 452]]);
  });

  it('refuses to send over a session without the TLS its rule requires: 4.7.5, nothing sent', async () => {
    const { port, seen } = await peer({ hideSTARTTLS: true, disabledCommands: ['STARTTLS'] });
    const pool = new SmtpPool();
    const result = await deliverToHop(hop(port), message([{ address: 'bob@x.test' }]), opts, pool, tls('require'));
    await pool.closeAll();
    expect(result).toMatchObject({ kind: 'unreachable', code: 451, status: '4.7.5', reason: expect.stringMatching(/^TLS policy "x\.test" \(require\) for x\.test requires TLS: .*STARTTLS/) });
    expect(seen.rcpt).toEqual([]);
  });

  it('bounces a message larger than the hop advertises without sending it', async () => {
    const { port, seen } = await peer({ size: 10 });
    const pool = new SmtpPool();
    const result = await deliverToHop(hop(port), message([{ address: 'bob@x.test' }]), opts, pool, tls('none'));
    await pool.closeAll();
    expect(result).toMatchObject({ kind: 'done', outcomes: [{ verdict: 'bounced', code: 552, status: '5.3.4' }] });
    expect(seen.rcpt).toEqual([]);
  });

  it('reuses a pooled session for the next message, and replaces one the peer dropped while idle', async () => {
    const { port, seen } = await peer();
    const pool = new SmtpPool();
    const first = await deliverToHop(hop(port), message([{ address: 'a@x.test' }]), opts, pool, tls('none'));
    expect(first).toMatchObject({ kind: 'done', outcomes: [{ verdict: 'delivered' }] });
    expect(pool.openCount(opts.pair)).toBe(1);
    const second = await deliverToHop(hop(port), message([{ address: 'b@x.test' }]), opts, pool, tls('none'));
    expect(second).toMatchObject({ kind: 'done', outcomes: [{ verdict: 'delivered' }] });
    expect(pool.openCount(opts.pair)).toBe(1);
    // The peer drops its idle connections: the next delivery still succeeds on the first attempt.
    for (const c of (servers[0] as unknown as { connections: Set<{ _socket: { destroy(): void } }> }).connections) c._socket.destroy();
    const third = await deliverToHop(hop(port), message([{ address: 'c@x.test' }]), opts, pool, tls('none'));
    await pool.closeAll();
    expect(third).toMatchObject({ kind: 'done', outcomes: [{ verdict: 'delivered' }] });
    expect(seen.data).toHaveLength(3);
  });
});
