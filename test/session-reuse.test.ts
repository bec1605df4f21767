// Delivery reuses sessions; a cached session the peer dropped is replaced without blaming the destination.
import { createServer, type Socket } from 'node:net';
import nodemailer from 'nodemailer';
import { describe, expect, it } from 'vitest';
import { baseConfig, startApp, waitUntil } from './helpers/app.js';

/** A bare SMTP server that drops the connection, without a word, at the second MAIL FROM of a session. */
async function startDroppingSink(): Promise<{ port: number; connections: number; drops: number; delivered: string[]; close: () => Promise<void> }> {
  const state = { connections: 0, drops: 0, delivered: [] as string[] };
  const sockets = new Set<Socket>();
  const server = createServer((socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    state.connections++;
    let mails = 0;
    let inData = false;
    let buf = '';
    let rcpt = '';
    socket.write('220 drop.test ESMTP\r\n');
    socket.on('data', (d) => {
      buf += d.toString('latin1');
      for (;;) {
        if (inData) {
          const end = buf.indexOf('\r\n.\r\n');
          if (end < 0) return;
          buf = buf.slice(end + 5);
          inData = false;
          state.delivered.push(rcpt);
          socket.write('250 2.0.0 ok\r\n');
          continue;
        }
        const nl = buf.indexOf('\r\n');
        if (nl < 0) return;
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 2);
        const verb = line.slice(0, 4).toUpperCase();
        if (verb === 'EHLO' || verb === 'HELO') socket.write('250 drop.test\r\n');
        else if (verb === 'MAIL') {
          if (++mails === 2) { state.drops++; socket.destroy(); return; }
          socket.write('250 2.1.0 ok\r\n');
        } else if (verb === 'RCPT') { rcpt = /<([^>]*)>/.exec(line)?.[1] ?? ''; socket.write('250 2.1.5 ok\r\n'); }
        else if (verb === 'DATA') { inData = true; socket.write('354 go ahead\r\n'); }
        else if (verb === 'RSET') socket.write('250 2.0.0 ok\r\n');
        else if (verb === 'QUIT') { socket.end('221 2.0.0 bye\r\n'); return; }
        else socket.write('502 5.5.1 no\r\n');
      }
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.3', () => r()));
  return {
    port: (server.address() as { port: number }).port,
    get connections() { return state.connections; },
    get drops() { return state.drops; },
    delivered: state.delivered,
    close: () => new Promise<void>((r) => { for (const s of sockets) s.destroy(); server.close(() => r()); }),
  };
}

describe('session reuse', () => {
  it('replaces a cached session that the peer dropped and delivers on the first attempt', async () => {
    const sink = await startDroppingSink();
    const t = await startApp((dir) => baseConfig(dir, {
      trustedNetworks: ['127.0.0.1/32'],
      routes: { 'remote.test': { host: '127.0.0.3', port: sink.port } },
    }));
    try {
      const mailer = nodemailer.createTransport({ host: '127.0.0.1', port: t.port('mx'), ignoreTLS: true });
      await mailer.sendMail({ from: 'me@sender.test', to: 'one@remote.test', text: 'first' });
      await waitUntil(() => sink.delivered.length === 1, 10_000, 'the first delivery');
      await mailer.sendMail({ from: 'me@sender.test', to: 'two@remote.test', text: 'second' });
      await waitUntil(() => sink.delivered.length === 2, 10_000, 'the second delivery');
      expect(sink.delivered).toEqual(['one@remote.test', 'two@remote.test']);
      // The second message went first to the cached session, which the peer dropped, then to a fresh one.
      expect(sink.drops).toBe(1);
      expect(sink.connections).toBe(2);
      await waitUntil(() => t.logs.filter((l) => l.msg === 'delivery attempt').length === 2);
      expect(t.logs.filter((l) => l.msg === 'delivery attempt').map((l) => `${l.rcpt} ${l.verdict} ${l.attempt}`))
        .toEqual(['one@remote.test delivered 1', 'two@remote.test delivered 1']);
    } finally {
      await t.stop();
      await sink.close();
    }
  });
});
