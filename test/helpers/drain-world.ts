/*
 * What the drain and cluster-status scenarios share: the `ichidan` CLI run as a real process,
 * mail sent with its DSN parameters over a raw socket, a peer that takes a transfer up to its
 * final dot and then drops the connection (never answering, never keeping anything), and a node
 * entry written into the registry by hand (so such a peer is listed as alive).
 */
import { execFile } from 'node:child_process';
import { createServer, type Server, type Socket } from 'node:net';
import type { Redis } from 'ioredis';
import { CLI } from './child.js';
import { RawSmtp } from './raw-smtp.js';

export interface CliRun { code: number; stdout: string; stderr: string }

/** `ichidan ARGS` as a real process; never rejects (the exit code is the result). */
export function runCli(args: string[]): Promise<CliRun> {
  return new Promise((resolve) => {
    execFile(process.execPath, [CLI, ...args], { timeout: 30_000 }, (err, stdout, stderr) => {
      const code = err ? (typeof (err as { code?: unknown }).code === 'number' ? (err as { code: number }).code : 1) : 0;
      resolve({ code, stdout, stderr });
    });
  });
}

/** One message: `mailParams` after MAIL FROM, each recipient "addr [PARAMS]"; resolves with the queue id. */
export async function sendMail(port: number, from: string, to: string[], opts: { mailParams?: string; subject?: string } = {}): Promise<string> {
  const c = await RawSmtp.open(port);
  try {
    await c.reply();
    await c.command('EHLO client.test');
    const mail = await c.command(`MAIL FROM:<${from}>${opts.mailParams ? ' ' + opts.mailParams : ''}`);
    if (!mail.startsWith('250')) throw new Error(`MAIL → ${mail}`);
    for (const r of to) {
      const [address, ...params] = r.split(' ');
      const reply = await c.command([`RCPT TO:<${address}>`, ...params].join(' '));
      if (!reply.startsWith('250')) throw new Error(`RCPT ${r} → ${reply}`);
    }
    const data = await c.command('DATA');
    if (!data.startsWith('354')) throw new Error(`DATA → ${data}`);
    return await c.finishData(`Subject: ${opts.subject ?? 'drain'}\r\n\r\nbody\r\n`);
  } finally {
    c.close();
  }
}

/** A peer that breaks every transfer off after the data: it answers, takes the body, then drops the connection. */
export async function startDropper(host = '127.0.0.1'): Promise<{ port: number; drops: number; close(): Promise<void> }> {
  const state = { drops: 0 };
  const sockets = new Set<Socket>();
  const server: Server = createServer((socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    socket.on('error', () => undefined);
    let buf = '';
    let inData = false;
    socket.write('220 dropper ESMTP\r\n');
    socket.on('data', (d) => {
      buf += d.toString('latin1');
      for (;;) {
        if (inData) {
          const end = buf.indexOf('\r\n.\r\n');
          if (end < 0) return;
          state.drops++;
          socket.destroy();
          return;
        }
        const nl = buf.indexOf('\r\n');
        if (nl < 0) return;
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 2);
        const verb = line.slice(0, 4).toUpperCase();
        if (verb === 'EHLO') socket.write('250-dropper\r\n250-DSN\r\n250 8BITMIME\r\n');
        else if (verb === 'DATA') {
          inData = true;
          socket.write('354 go ahead\r\n');
          buf = '\r\n' + buf;
        } else if (verb === 'QUIT') socket.end('221 bye\r\n');
        else socket.write('250 ok\r\n');
      }
    });
  });
  await new Promise<void>((r) => server.listen(0, host, () => r()));
  return {
    port: (server.address() as { port: number }).port,
    get drops() { return state.drops; },
    close: () => new Promise<void>((r) => {
      for (const s of sockets) s.destroy();
      server.close(() => r());
    }),
  };
}

/** Keeps a node entry in the registry (`prefix:nodes`) fresh until stopped, then removes it. */
export function fakeNode(redis: Redis, prefix: string, node: string, smtp: { address: string; port: number }): { stop(): Promise<void> } {
  const report = JSON.stringify({ node, host: 'fake', pid: 0, smtp, startedAt: Date.now(), active: 0, waiting: 0, queue: {}, draining: false, loopDelayMs: 0, rssMb: 0, leases: 0 });
  const beat = async () => {
    const [s, us] = await redis.time();
    await redis.multi().hset(`${prefix}:nodes`, node, report).zadd(`${prefix}:nodes:seen`, Number(s) * 1000 + Math.floor(Number(us) / 1000), node).exec();
  };
  void beat();
  const timer = setInterval(() => void beat().catch(() => undefined), 200);
  return {
    async stop() {
      clearInterval(timer);
      await redis.multi().hdel(`${prefix}:nodes`, node).zrem(`${prefix}:nodes:seen`, node).exec();
    },
  };
}
