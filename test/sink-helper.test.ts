/*
 * The test sink's throttling knobs over real sockets: the per-client connection cap answers 421 at
 * the banner and frees a slot when a client leaves (after STARTTLS too), the tarpit delays the greeting and every
 * transaction reply, the banner and MAIL FROM scripts answer what they are told, and the counts and
 * per-message fields a benchmark reads are right.
 */
import { connect, type Socket } from 'node:net';
import SMTPConnection from 'nodemailer/lib/smtp-connection';
import { afterEach, describe, expect, it } from 'vitest';
import { startSink, type Sink } from './helpers/sink.js';

/** Opens a connection from `localAddress` and resolves with the socket and the first reply line. */
function greeting(sink: Sink, localAddress: string): Promise<{ socket: Socket; banner: string }> {
  return new Promise((resolve, reject) => {
    const socket = connect({ host: sink.host, port: sink.port, localAddress });
    let buf = '';
    socket.on('data', (d: Buffer) => {
      buf += d.toString('latin1');
      const end = buf.indexOf('\r\n');
      if (end >= 0) resolve({ socket, banner: buf.slice(0, end) });
    });
    socket.once('error', reject);
  });
}

function closed(socket: Socket): Promise<void> {
  return new Promise((resolve) => {
    if (socket.destroyed) return resolve();
    socket.once('close', () => resolve());
    socket.end();
  });
}

/** One message through nodemailer's client; resolves with the send error, if any, and the time taken. */
async function send(sink: Sink, localAddress: string): Promise<{ error?: Error & { responseCode?: number }; ms: number }> {
  const started = Date.now();
  const conn = new SMTPConnection({ host: sink.host, port: sink.port, localAddress, ignoreTLS: true, name: 'client.test' });
  try {
    await new Promise<void>((resolve, reject) => conn.connect((err?: Error | null) => (err ? reject(err) : resolve())));
    await new Promise<void>((resolve, reject) => conn.send({ from: 'a@client.test', to: ['b@sink.test'] }, 'Subject: t\r\n\r\nbody\r\n',
      (err) => (err ? reject(err) : resolve())));
    return { ms: Date.now() - started };
  } catch (error) {
    return { error: error as Error, ms: Date.now() - started };
  } finally {
    conn.close();
  }
}

const open: Array<{ close(): Promise<void> }> = [];
const sockets: Socket[] = [];
afterEach(async () => {
  for (const s of sockets.splice(0)) s.destroy();
  for (const s of open.splice(0)) await s.close();
});

async function sinkWith(opts: Parameters<typeof startSink>[0]): Promise<Sink> {
  const sink = await startSink(opts);
  open.push(sink);
  return sink;
}

describe('test sink', () => {
  it('refuses the 11th simultaneous connection from one client with 421 and counts it', async () => {
    const sink = await sinkWith({ host: '127.0.0.34', maxConnectionsPerClient: 10 });
    const ten = await Promise.all(Array.from({ length: 10 }, () => greeting(sink, '127.0.0.21')));
    sockets.push(...ten.map((g) => g.socket));
    expect(ten.map((g) => g.banner.slice(0, 4))).toEqual(Array(10).fill('220 '));

    const eleventh = await greeting(sink, '127.0.0.21');
    sockets.push(eleventh.socket);
    expect(eleventh.banner).toBe('421 4.7.0 too many connections from 127.0.0.21');
    const other = await greeting(sink, '127.0.0.22');
    sockets.push(other.socket);
    expect(other.banner).toMatch(/^220 /);
    expect({ connections: sink.connections, refused: sink.refused, peak: sink.peakConnections, open: sink.open })
      .toEqual({ connections: 11, refused: 1, peak: 10, open: 11 });

    await closed(ten[0].socket);
    const again = await greeting(sink, '127.0.0.21');
    sockets.push(again.socket);
    expect(again.banner).toMatch(/^220 /);
    expect(sink.refused).toBe(1);
    expect(sink.peakConnections).toBe(10);

    await Promise.all([...ten.slice(1), other, again].map((g) => closed(g.socket)));
    expect(sink.open).toBe(0);
  });

  it('frees the slot of a connection that went through STARTTLS once it ends', async () => {
    const sink = await sinkWith({ host: '127.0.0.34', maxConnectionsPerClient: 1 });
    const conn = new SMTPConnection({ host: sink.host, port: sink.port, localAddress: '127.0.0.21', tls: { rejectUnauthorized: false } });
    await new Promise<void>((resolve, reject) => conn.connect((err?: Error | null) => (err ? reject(err) : resolve())));
    expect(conn.secure).toBe(true);
    expect(sink.open).toBe(1);
    await new Promise<void>((resolve) => { conn.once('end', () => resolve()); conn.quit(); });

    const next = await greeting(sink, '127.0.0.21');
    sockets.push(next.socket);
    expect(next.banner).toMatch(/^220 /);
    expect({ connections: sink.connections, refused: sink.refused, open: sink.open }).toEqual({ connections: 2, refused: 0, open: 1 });
  });

  it('tarpit: delays the greeting and the MAIL, RCPT and end-of-DATA replies', async () => {
    const sink = await sinkWith({ host: '127.0.0.34', replyDelay: 200 });
    const started = Date.now();
    const g = await greeting(sink, '127.0.0.21');
    sockets.push(g.socket);
    expect(g.banner).toMatch(/^220 /);
    expect(Date.now() - started).toBeGreaterThanOrEqual(190);

    const sent = await send(sink, '127.0.0.21');
    expect(sent.error).toBeUndefined();
    expect(sent.ms).toBeGreaterThanOrEqual(4 * 190);
    const [m] = sink.messages;
    expect(m.clientAddress).toBe('127.0.0.21');
    expect(m.connection).toBe(2);
    expect(m.at).toBeGreaterThanOrEqual(started + 4 * 190);
    expect(m.at).toBeLessThanOrEqual(Date.now());
  });

  it('answers the banner and MAIL FROM as scripted, numbering connections and MAILs over all clients', async () => {
    const seen: string[] = [];
    const sink = await sinkWith({
      host: '127.0.0.34',
      connect: (ip, n) => { seen.push(`connect ${ip} ${n}`); return n === 1 ? { code: 421, text: '4.7.0 rate limited' } : undefined; },
      mail: (ip, n) => { seen.push(`mail ${ip} ${n}`); return n === 1 ? { code: 451, text: '4.7.1 too many messages, slow down' } : undefined; },
    });
    const refused = await greeting(sink, '127.0.0.21');
    sockets.push(refused.socket);
    expect(refused.banner).toBe('421 4.7.0 rate limited');

    const throttled = await send(sink, '127.0.0.22');
    expect(throttled.error?.responseCode).toBe(451);
    expect(throttled.error?.message).toContain('4.7.1 too many messages, slow down');
    expect((await send(sink, '127.0.0.23')).error).toBeUndefined();

    expect(seen).toEqual(['connect 127.0.0.21 1', 'connect 127.0.0.22 2', 'mail 127.0.0.22 1', 'connect 127.0.0.23 3', 'mail 127.0.0.23 2']);
    expect(sink.messages.map((m) => [m.clientAddress, m.connection])).toEqual([['127.0.0.23', 3]]);
    // Refusals by a script are not the cap's: neither accepted nor counted as refused.
    expect({ connections: sink.connections, refused: sink.refused }).toEqual({ connections: 2, refused: 0 });
  });
});
