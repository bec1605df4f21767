// Bad client input in every state of a proxied session, against Ichidan as a child process (so a
// crash shows as an exit, not as a test error): the process must live on, the bad client must get
// a clear reply or a clean close, the destination must never take a partial or refused message,
// and another client's transaction must go through afterwards.
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { RawSmtp } from './helpers/raw-smtp.js';
import { startProxyChild, type ProxyChild } from './helpers/proxy-child.js';

/** A destination whose 354 and final reply can be held back, so the client's bytes meet each state. */
class Destination {
  readonly messages: string[] = [];
  delay354 = 0;
  delayFinal = 0;
  readonly server: Server;
  readonly sockets = new Set<Socket>();

  constructor() {
    this.server = createServer((s) => this.#serve(s));
  }

  listen(): Promise<number> {
    return new Promise((r) => this.server.listen(0, '127.0.0.61', () => r((this.server.address() as { port: number }).port)));
  }

  close(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    return new Promise((r) => this.server.close(() => r()));
  }

  #serve(s: Socket): void {
    this.sockets.add(s);
    s.on('close', () => this.sockets.delete(s));
    s.on('error', () => undefined);
    let buf = '';
    let inData = false;
    let waiting = false;
    s.write('220 dest.test ESMTP\r\n');
    const step = () => {
      while (!waiting) {
        if (inData) {
          const end = buf.indexOf('\r\n.\r\n');
          if (end < 0) return;
          const message = buf.slice(0, end + 2);
          buf = buf.slice(end + 5);
          inData = false;
          waiting = true;
          setTimeout(() => {
            this.messages.push(message);
            waiting = false;
            if (!s.destroyed) s.write('250 2.0.0 taken\r\n');
            step();
          }, this.delayFinal);
          continue;
        }
        const nl = buf.indexOf('\r\n');
        if (nl < 0) return;
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 2);
        const verb = line.slice(0, 4).toUpperCase();
        if (verb === 'EHLO') s.write('250-dest.test\r\n250-PIPELINING\r\n250 8BITMIME\r\n');
        else if (verb === 'QUIT') { s.end('221 bye\r\n'); return; }
        else if (verb === 'DATA') {
          waiting = true;
          setTimeout(() => {
            waiting = false;
            inData = true;
            buf = '\r\n' + buf;
            if (!s.destroyed) s.write('354 go\r\n');
            step();
          }, this.delay354);
        } else s.write('250 ok\r\n');
      }
    };
    s.on('data', (d) => { buf += d.toString('latin1'); step(); });
  }
}

/** The next reply's lines, or "closed" when the proxy closed the connection instead. */
async function answer(c: RawSmtp, timeoutMs = 10_000): Promise<string> {
  try {
    return (await c.reply(timeoutMs)).join('\n');
  } catch (err) {
    if (c.closed) return 'closed';
    throw err;
  }
}

type Setup = (c: RawSmtp, dest: Destination) => Promise<void>;
type Bad = (c: RawSmtp) => Promise<string | null>;

const ok = async (c: RawSmtp, line: string) => expect(await c.command(line)).toMatch(/^[23]\d\d/);

const STATES: Record<string, Setup> = {
  'before EHLO': async () => undefined,
  'after EHLO': async (c) => ok(c, 'EHLO legacy.test'),
  'after MAIL': async (c) => { await ok(c, 'EHLO legacy.test'); await ok(c, 'MAIL FROM:<a@legacy.test>'); },
  'after RCPT (destination open)': async (c) => { await ok(c, 'EHLO legacy.test'); await ok(c, 'MAIL FROM:<a@legacy.test>'); await ok(c, 'RCPT TO:<x@dest.test>'); },
};

const DATA_STATES: Record<string, Setup> = {
  'DATA before the destination\'s 354': async (c, dest) => {
    dest.delay354 = 800;
    await STATES['after RCPT (destination open)'](c, dest);
    await ok(c, 'DATA');
  },
  'DATA streaming (after the destination\'s 354)': async (c, dest) => {
    await STATES['after RCPT (destination open)'](c, dest);
    await ok(c, 'DATA');
    c.send('Subject: streaming\r\n\r\n' + 'good line\r\n'.repeat(2000));
    await new Promise((r) => setTimeout(r, 300));
  },
};

/** Bad input in command states: each must get a reply (any code) or a clean close. */
const COMMAND_BAD: Record<string, Bad> = {
  'bare LF': async (c) => { c.send('NOOP\nRSET\n'); return answer(c); },
  'bare CR': async (c) => { c.send('NOOP\rRSET\r\n'); return answer(c); },
  NUL: async (c) => { c.send('NO\0OP\r\n'); return answer(c); },
  'overlong line': async (c) => { c.send('X'.repeat(200_000) + '\r\n'); return answer(c); },
  'invalid command': async (c) => { c.send('FOO BAR\r\n'); return answer(c); },
  'binary garbage': async (c) => { c.send(Buffer.from([0x16, 0x03, 0x01, 0xff, 0x00, 0x0a, 0x0d, 0x80, 0xfe, 0x0d, 0x0a])); return answer(c); },
  'abrupt close': async (c) => { c.close(); return null; },
};

/** Bad message data: a bare line ending is refused with 550 5.6.0; the rest gets a reply. */
const DATA_BAD: Record<string, Bad> = {
  'bare LF': async (c) => { c.send('Subject: lf\r\n\r\nline one\nline two\r\n.\r\n'); return answer(c); },
  'bare CR': async (c) => { c.send('Subject: cr\r\n\r\nline one\rline two\r\n.\r\n'); return answer(c); },
  NUL: async (c) => { c.send('Subject: nul\r\n\r\nline\0one\r\n.\r\n'); return answer(c); },
  'overlong line': async (c) => { c.send('Subject: long\r\n\r\n' + 'y'.repeat(300_000) + '\r\n.\r\n'); return answer(c); },
  'abrupt close': async (c) => { c.close(); return null; },
  'pipelined garbage after the data': async (c) => { c.send('Subject: p\r\n\r\nbody\r\n.\r\nFOO\r\n\0\0\0\r\nMAIL FROM:<\n>\r\n'); return answer(c); },
};

describe.each([
  ['streamed through', {}],
  ['scanned first (proxy.scan)', { proxy: { scan: true }, engines: [{ name: 'attachments', type: 'policy' }] }],
])('transparent proxy, %s: bad client input in every state (child process)', (_mode, extra) => {
  let dir: string;
  let dest: Destination;
  let child: ProxyChild;
  let port: number;
  let seq = 0;
  let start: () => Promise<void>;

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'ichidan-proxy-bad-'));
    dest = new Destination();
    const destPort = await dest.listen();
    const configFile = join(dir, 'config.json');
    await writeFile(configFile, JSON.stringify({
      hostname: 'proxy.ichidan.test',
      dataDir: join(dir, 'data'),
      log: { level: 'warn' },
      listeners: [{ name: 'proxy', role: 'proxy', address: '127.0.0.1', port: 0, tls: 'starttls' }],
      trustedNetworks: ['127.0.0.1/32'],
      queue: { fsync: false },
      limits: { maxMessageSize: '1MB' },
      ...extra,
    }));
    start = async () => {
      child = await startProxyChild(configFile, `127.0.0.61:${destPort}`);
      port = child.ports.proxy;
    };
    await start();
  }, 30_000);

  // A case that ended the process fails on its own; the next one gets a fresh process.
  beforeEach(async () => {
    if (child.proc.exitCode !== null || child.proc.signalCode !== null) await start();
  }, 30_000);

  afterAll(async () => {
    if (child && child.proc.exitCode === null) {
      child.proc.kill('SIGTERM');
      await child.exited;
    }
    await dest?.close();
    await rm(dir, { recursive: true, force: true });
  });

  /** The process lives, and a well-formed transaction from another client reaches the destination. */
  async function stillServes(): Promise<void> {
    dest.delay354 = 0;
    dest.delayFinal = 0;
    expect(child.proc.exitCode, `the proxy process ended: ${child.stderr()}`).toBeNull();
    const marker = `after-${++seq}`;
    const c = await RawSmtp.open(port);
    try {
      await c.reply();
      await ok(c, 'EHLO good.test');
      await ok(c, 'MAIL FROM:<good@legacy.test>');
      await ok(c, 'RCPT TO:<y@dest.test>');
      await ok(c, 'DATA');
      expect(await c.command(`Subject: ${marker}\r\n\r\nfine\r\n.`)).toMatch(/^250 /);
      expect(dest.messages.some((m) => m.includes(`Subject: ${marker}`))).toBe(true);
    } finally {
      c.close();
    }
  }

  async function session(setup: Setup): Promise<RawSmtp> {
    const c = await RawSmtp.open(port);
    await c.reply();
    await setup(c, dest);
    return c;
  }

  for (const [state, setup] of Object.entries(STATES)) {
    for (const [bad, send] of Object.entries(COMMAND_BAD)) {
      it(`${state}: ${bad}`, async () => {
        const c = await session(setup);
        const got = await send(c);
        if (got !== null) expect(got).toMatch(/^([2345]\d\d[ -]|closed$)/);
        c.close();
        await stillServes();
      });
    }
  }

  for (const [state, setup] of Object.entries(DATA_STATES)) {
    for (const [bad, send] of Object.entries(DATA_BAD)) {
      it(`${state}: ${bad}`, async () => {
        const before = dest.messages.length;
        const c = await session(setup);
        const got = await send(c);
        if (bad === 'bare LF' || bad === 'bare CR') {
          expect(got).toMatch(/^550 5\.6\.0 /);
          expect(dest.messages.slice(before).some((m) => /line (one|two)/.test(m))).toBe(false);
        } else if (got !== null) {
          expect(got).toMatch(/^([2345]\d\d[ -]|closed$)/);
        }
        if (bad === 'abrupt close') {
          await new Promise((r) => setTimeout(r, 1_000));
          expect(dest.messages.length).toBe(before);
        }
        c.close();
        await stillServes();
      });
    }
  }

  it('after the final dot, awaiting the destination: the client leaves', async () => {
    dest.delayFinal = 800;
    const c = await session(STATES['after RCPT (destination open)']);
    await ok(c, 'DATA');
    c.send('Subject: left\r\n\r\nbody\r\n.\r\n');
    await new Promise((r) => setTimeout(r, 100));
    c.close();
    await new Promise((r) => setTimeout(r, 1_200));
    await stillServes();
  });

  it('after the final dot, awaiting the destination: pipelined garbage', async () => {
    dest.delayFinal = 500;
    const c = await session(STATES['after RCPT (destination open)']);
    await ok(c, 'DATA');
    c.send('Subject: waiting\r\n\r\nbody\r\n.\r\nFOO\nBAR\r\0\r\nRCPT TO:<\r\n' + 'Z'.repeat(100_000) + '\r\n');
    expect(await answer(c)).toMatch(/^250 /);
    c.close();
    await stillServes();
  });

  it('during STARTTLS: plain garbage instead of a TLS handshake, and a close mid-handshake', async () => {
    const c = await session(STATES['after EHLO']);
    await ok(c, 'STARTTLS');
    c.send('MAIL FROM:<a@legacy.test>\r\nRCPT TO:<x@dest.test>\r\n\0\n\r');
    expect(await answer(c, 15_000)).toMatch(/^([2345]\d\d[ -]|closed$)/);
    c.close();
    const d = await session(STATES['after EHLO']);
    await ok(d, 'STARTTLS');
    d.send(Buffer.from([0x16, 0x03, 0x01, 0x00, 0x40, 0x01, 0x00]));
    d.close();
    await stillServes();
  });

  it('pipelined garbage in one write, from the greeting to QUIT', async () => {
    const c = await RawSmtp.open(port);
    await c.reply();
    c.send('EHLO x\r\nMAIL FROM:<a@legacy.test>\r\nRCPT TO:<x@dest.test>\r\nDATA\r\nSubject: g\r\n\r\nbad\nline\r\n.\r\nMAIL FROM:<\0>\r\nQUIT\r\n');
    const replies: string[] = [];
    for (;;) {
      const r = await answer(c);
      replies.push(r);
      if (r === 'closed' || r.startsWith('221')) break;
    }
    expect(replies.join('\n')).toMatch(/^550 5\.6\.0 /m);
    await stillServes();
  });
});
