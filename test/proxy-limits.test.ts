// The transparent proxy listener under the same per-client limits and deadlines as the MX and
// submission listeners: a trickled command line, DATA below the minimum rate, too many connections
// from one address. The original destination is given by the test; the destination is a raw SMTP
// server that records how each transaction ended (its final dot, RSET, QUIT, or the connection
// dropped), so a truncated message ended with a dot would show.
import { createServer, type Server, type Socket } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { baseConfig, startApp, waitUntil, type ConfigInput, type TestApp } from './helpers/app.js';
import { RawSmtp } from './helpers/raw-smtp.js';

const cleanup: Array<() => Promise<unknown>> = [];
afterEach(async () => {
  for (const c of cleanup.splice(0).reverse()) await c();
});

type Ending = 'dot' | 'rset' | 'quit' | 'dropped';

interface Destination {
  port: number;
  /** Messages ended with the final dot. */
  messages: string[];
  /** How each transaction ended (from its MAIL FROM on). */
  endings: Ending[];
}

/** A destination taking any transaction, recording how each one ended. */
async function destination(host: string, dotDelayMs = 0, dataReply = '354 go'): Promise<Destination> {
  const d: Destination = { port: 0, messages: [], endings: [] };
  const connections = new Set<Socket>();
  const server: Server = createServer((s) => {
    connections.add(s);
    s.on('close', () => connections.delete(s));
    let buf = '';
    let inData = false;
    let inTransaction = false;
    let body = '';
    s.on('error', () => undefined);
    s.write('220 dest.test ESMTP\r\n');
    s.on('close', () => { if (inTransaction) d.endings.push('dropped'); });
    s.on('data', (chunk) => {
      buf += chunk.toString('latin1');
      for (;;) {
        const i = buf.indexOf('\r\n');
        if (i < 0) return;
        const line = buf.slice(0, i);
        buf = buf.slice(i + 2);
        if (inData) {
          if (line === '.') {
            inData = false;
            inTransaction = false;
            d.messages.push(body);
            d.endings.push('dot');
            body = '';
            setTimeout(() => { if (!s.destroyed) s.write('250 2.6.0 taken\r\n'); }, dotDelayMs);
          } else {
            body += `${line}\r\n`;
          }
          continue;
        }
        if (/^EHLO/i.test(line)) s.write('250-dest.test\r\n250 PIPELINING\r\n');
        else if (/^DATA/i.test(line)) {
          if (dataReply.startsWith('354')) inData = true;
          else inTransaction = false;
          s.write(`${dataReply}\r\n`);
        }
        else if (/^QUIT/i.test(line)) { if (inTransaction) d.endings.push('quit'); inTransaction = false; s.write('221 bye\r\n'); s.end(); }
        else if (/^RSET/i.test(line)) { if (inTransaction) d.endings.push('rset'); inTransaction = false; s.write('250 ok\r\n'); }
        else {
          if (/^MAIL/i.test(line)) inTransaction = true;
          s.write('250 ok\r\n');
        }
      }
    });
  });
  await new Promise<void>((r) => server.listen(0, host, () => r()));
  d.port = (server.address() as { port: number }).port;
  cleanup.push(() => new Promise((r) => { server.close(r); for (const c of connections) c.destroy(); }));
  return d;
}

async function proxy(dst: Destination, host: string, limits: Record<string, unknown>, extra: Partial<ConfigInput> = {}): Promise<TestApp> {
  const t = await startApp((dataDir) => baseConfig(dataDir, {
    listeners: [{ name: 'proxy', role: 'proxy', port: 0, tls: 'none' }],
    trustedNetworks: ['127.0.0.1/32'],
    queue: { fsync: false },
    limits: limits as ConfigInput['limits'],
    ...extra,
  }), { originalDst: () => ({ address: host, port: dst.port, family: 4 }) });
  cleanup.push(() => t.stop());
  return t;
}

async function open(port: number): Promise<RawSmtp> {
  const c = await RawSmtp.open(port);
  cleanup.push(async () => c.close());
  return c;
}

/** A whole proxied transaction on a new connection; the destination must take it with its final dot. */
async function relayOne(port: number, dst: Destination, subject: string): Promise<void> {
  const before = dst.messages.length;
  const c = await RawSmtp.atData(port, 'a@legacy.test', ['x@dest.test']);
  cleanup.push(async () => c.close());
  expect(await c.finishData(`Subject: ${subject}\r\n\r\nbody\r\n`)).toBe('taken');
  expect(dst.messages).toHaveLength(before + 1);
  expect(dst.messages[before]).toContain(`Subject: ${subject}`);
  await c.command('QUIT');
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('transparent proxy: per-client limits and deadlines', () => {
  it('ends a command line trickled past limits.commandDeadline with 421 4.4.2, and goes on relaying', async () => {
    const dst = await destination('127.0.0.71');
    const t = await proxy(dst, '127.0.0.71', { commandDeadline: '1s' });
    const c = await open(t.port('proxy'));
    expect((await c.reply()).join('\n')).toMatch(/^220 /);
    const started = Date.now();
    // one byte every 200 ms: the idle timeout never fires, the line never ends
    const trickle = setInterval(() => { if (!c.closed) c.socket.write('E'); }, 200);
    try {
      expect((await c.reply(8_000)).join('\n')).toMatch(/^421 4\.4\.2 timeout: command line not complete in time/);
    } finally {
      clearInterval(trickle);
    }
    expect(Date.now() - started).toBeLessThan(4_000);
    await waitUntil(() => c.closed, 5_000, 'the connection to close');
    await relayOne(t.port('proxy'), dst, 'after the trickler');
  });

  it('ends DATA slower than limits.minDataRate with 421 4.4.2 and breaks off the destination\'s transaction before its final dot', async () => {
    const dst = await destination('127.0.0.72');
    const t = await proxy(dst, '127.0.0.72', { commandDeadline: '1s', minDataRate: 100 });
    // What the destination's site is told: a slow client is not the destination's failure.
    const control = t.app.queue.control;
    const signals: string[] = [];
    const onSignal = control.onSignal.bind(control);
    control.onSignal = (site, source, tenant, signal, now) => {
      signals.push(signal.kind);
      onSignal(site, source, tenant, signal, now);
    };
    const c = await RawSmtp.atData(t.port('proxy'), 'slow@legacy.test', ['x@dest.test']);
    cleanup.push(async () => c.close());
    c.send('Subject: slow\r\n\r\n');
    // 5 bytes a second against 100 allowed: past the grace (1 s) plus 0.2 s, the deadline passes
    const trickle = setInterval(() => { if (!c.closed) c.socket.write('x'); }, 200);
    try {
      expect((await c.reply(8_000)).join('\n')).toMatch(/^421 4\.4\.2 timeout: message data arriving too slowly/);
    } finally {
      clearInterval(trickle);
    }
    await waitUntil(() => dst.endings.length > 0, 5_000, 'the destination\'s transaction to end');
    await sleep(300);
    expect(dst.messages).toHaveLength(0);
    expect(dst.endings).toEqual(['dropped']);
    expect(signals.filter((k) => k !== 'ok')).toEqual([]);
    await relayOne(t.port('proxy'), dst, 'after the slow one');
    expect(dst.endings).toEqual(['dropped', 'dot']);
  });

  it('keeps the data rate when the relay ended early (the destination refused DATA): a client trickling the rest line by line gets 421 4.4.2', async () => {
    const dst = await destination('127.0.0.76', 0, '554 5.3.0 no data today');
    const t = await proxy(dst, '127.0.0.76', { commandDeadline: '1s', minDataRate: 100 });
    const c = await RawSmtp.atData(t.port('proxy'), 'early@legacy.test', ['x@dest.test']);
    cleanup.push(async () => c.close());
    c.send('Subject: early\r\n\r\n');
    // Short whole lines, each well within the line deadline, 10 bytes a second against 100 allowed.
    const trickle = setInterval(() => { if (!c.closed) c.socket.write('x\r\n'); }, 300);
    try {
      expect((await c.reply(8_000)).join('\n')).toMatch(/^421 4\.4\.2 timeout: message data arriving too slowly/);
    } finally {
      clearInterval(trickle);
    }
    expect(dst.messages).toHaveLength(0);
  });

  it('ends a scanned tenant\'s DATA slower than limits.minDataRate with 421 4.4.2: nothing is relayed, the destination\'s transaction is reset', async () => {
    const dst = await destination('127.0.0.75');
    const t = await proxy(dst, '127.0.0.75', { commandDeadline: '1s', minDataRate: 100 }, {
      tenants: { legacy: { networks: ['127.0.0.1/32'] } },
      engines: [{ name: 'attachments', type: 'policy' }],
      proxy: { scan: ['legacy'] },
    });
    const c = await RawSmtp.atData(t.port('proxy'), 'slow@legacy.test', ['x@dest.test']);
    cleanup.push(async () => c.close());
    c.send('Subject: slow\r\n\r\n');
    const trickle = setInterval(() => { if (!c.closed) c.socket.write('x'); }, 200);
    try {
      expect((await c.reply(8_000)).join('\n')).toMatch(/^421 4\.4\.2 timeout: message data arriving too slowly/);
    } finally {
      clearInterval(trickle);
    }
    await waitUntil(() => dst.endings.length > 0, 5_000, 'the destination\'s transaction to end');
    expect(dst.messages).toHaveLength(0);
    expect(dst.endings).toEqual(['rset']);
    // a client too slow is not a failure of the proxy session
    expect(t.logs.filter((l) => l.msg === 'proxy session failed; closing it')).toEqual([]);
    await relayOne(t.port('proxy'), dst, 'scanned after the slow one');
    expect(dst.endings).toEqual(['rset', 'dot']);
  });

  it('does not count the destination\'s time after the client\'s final dot against the client\'s data rate', async () => {
    const dst = await destination('127.0.0.76', 2_500);
    const t = await proxy(dst, '127.0.0.76', { commandDeadline: '1s', minDataRate: 100 });
    await relayOne(t.port('proxy'), dst, 'a slow destination');
  });

  it('counts proxy clients by address once limits.client.exceptions is set: the third connection past maxConnections 2 gets 421 4.7.0', async () => {
    const dst = await destination('127.0.0.73');
    const t = await proxy(dst, '127.0.0.73', { client: { maxConnections: 2, exceptions: [] } });
    const first = await open(t.port('proxy'));
    const second = await open(t.port('proxy'));
    expect((await first.reply()).join('\n')).toMatch(/^220 /);
    expect((await second.reply()).join('\n')).toMatch(/^220 /);
    const third = await open(t.port('proxy'));
    expect((await third.reply()).join('\n')).toMatch(/^421 4\.7\.0 /);
    // the slots come back when the clients leave
    await first.command('QUIT');
    await second.command('QUIT');
    await waitUntil(() => first.closed && second.closed, 5_000, 'the two clients to leave');
    await sleep(100);
    await relayOne(t.port('proxy'), dst, 'after the refusal');
  });

  it('keeps the proxy\'s own clients exempt from the per-address counts by default', async () => {
    const dst = await destination('127.0.0.74');
    const t = await proxy(dst, '127.0.0.74', { client: { maxConnections: 1 } });
    const held = await open(t.port('proxy'));
    expect((await held.reply()).join('\n')).toMatch(/^220 /);
    await relayOne(t.port('proxy'), dst, 'exempt');
  });
});
