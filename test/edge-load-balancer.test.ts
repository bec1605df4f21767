// Behind a TCP load balancer: Debian's HAProxy in front of the MX listener on loopback, passing each
// client's address in a PROXY header (send-proxy: v1, send-proxy-v2: v2). Clients on other 127.x
// addresses go through HAProxy; Ichidan must see their address in the Received field, the per-client
// limit, the tenants' networks and the logs. Direct connections: a PROXY line from an address not in
// proxyProtocol.from is refused, and so is a configured balancer's connection without a header, or
// with a malformed or oversized one, without harm to the process.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { baseConfig, startApp, waitUntil, type TestApp } from './helpers/app.js';
import { HAPROXY_SKIP, haproxyAvailable, startHaproxy, type Haproxy } from './helpers/haproxy.js';
import { RawSmtp } from './helpers/raw-smtp.js';
import { startSink, type Sink } from './helpers/sink.js';
import { startDns, type TestDns } from './helpers/dns-server.js';

const available = haproxyAvailable();

describe.skipIf(!available)(`behind HAProxy (skipped when ${HAPROXY_SKIP})`, () => {
  let t: TestApp;
  let sink: Sink;
  let lb: Haproxy;
  const open: RawSmtp[] = [];

  beforeAll(async () => {
    sink = await startSink({ host: '127.0.0.2' });
    t = await startApp((dir) => baseConfig(dir, {
      listeners: [
        { name: 'mx', role: 'mx', port: 0, proxyProtocol: { from: ['127.0.0.1'], timeout: '700ms' } },
        // Port 465 style: the header comes first, then the TLS handshake.
        { name: 'smtps', role: 'submission', port: 0, tls: 'implicit', proxyProtocol: { from: ['127.0.0.1'], version: 'v2' } },
      ],
      tenants: {
        demo: { domains: ['example.test'] },
        // Its MSA relays by network: only its own address may, and only if Ichidan sees that address.
        acme: { networks: ['127.0.0.12/32'] },
      },
      routes: { 'example.test': { host: '127.0.0.2', port: sink.port }, 'elsewhere.test': { host: '127.0.0.2', port: sink.port } },
      limits: { client: { maxConnections: 1 } },
    }));
    lb = await startHaproxy([
      { name: 'v1', send: 'send-proxy', to: t.port('mx') },
      { name: 'v2', send: 'send-proxy-v2', to: t.port('mx') },
      { name: 'smtps', send: 'send-proxy-v2', to: t.port('smtps') },
    ]);
  }, 30_000);

  afterAll(async () => {
    for (const c of open) c.socket.destroy();
    await lb?.stop();
    await t?.stop();
    await sink?.close();
  });

  async function through(frontend: 'v1' | 'v2', from: string): Promise<{ c: RawSmtp; greeting: string }> {
    const c = await RawSmtp.open(lb.port(frontend), '127.0.0.1', from);
    open.push(c);
    return { c, greeting: (await c.reply()).join('\n') };
  }

  async function send(c: RawSmtp, to: string, subject: string): Promise<string> {
    for (const line of ['EHLO client.test', 'MAIL FROM:<someone@remote.test>', `RCPT TO:<${to}>`, 'DATA']) {
      const reply = await c.command(line);
      if (!/^[23]/.test(reply)) return reply;
    }
    c.send(`Subject: ${subject}\r\n\r\nthrough the balancer\r\n.\r\n`);
    return (await c.reply()).join('\n');
  }

  it.each([['v1', '127.0.0.9'], ['v2', '127.0.0.11']] as const)('takes mail through %s with the client address %s in the Received field', async (frontend, client) => {
    const { c, greeting } = await through(frontend, client);
    expect(greeting).toMatch(/^220 /);
    const subject = `via ${frontend}`;
    expect(await send(c, 'user@example.test', subject)).toMatch(/^250 /);
    expect(await c.command('QUIT')).toMatch(/^221 /);
    await waitUntil(() => sink.messages.some((m) => m.data.includes(subject)), 15_000, 'the message at the sink');
    const data = sink.messages.find((m) => m.data.includes(subject))!.data.toString();
    expect(data).toMatch(new RegExp(`^Received: from client\\.test \\(unknown \\[${client.replace(/\./g, '\\.')}\\]\\)`));
    expect(data).not.toContain('[127.0.0.1]');
  });

  it.each(['v1', 'v2'] as const)('counts the per-client limit by the client behind the balancer (%s)', async (frontend) => {
    const first = await through(frontend, '127.0.0.20');
    expect(first.greeting).toMatch(/^220 /);
    // One connection per client: the second from .20 is refused, though every connection comes from HAProxy's address.
    const second = await through(frontend, '127.0.0.20');
    expect(second.greeting).toMatch(/^421 4\.7\.0 /);
    await waitUntil(() => second.c.closed, 5000, 'the refused connection to close');
    const other = await through(frontend, '127.0.0.21');
    expect(other.greeting).toMatch(/^220 /);
    const ended = (client: string) => t.logs.filter((l) => l.msg === 'disconnect' && l.client === client).length;
    const before = [ended('127.0.0.20'), ended('127.0.0.21')];
    for (const c of [first.c, other.c]) await c.command('QUIT');
    // Ended at the server before the next case opens from the same client address (it counts until then).
    await waitUntil(() => ended('127.0.0.20') > before[0] && ended('127.0.0.21') > before[1], 5000, 'the sessions to end at the server');
    await waitUntil(() => t.logs.some((l) => l.msg === 'connection refused: per-client limit' && l.client === '127.0.0.20'), 5000, 'the refusal logged with the client address');
  });

  it('reads the header before the TLS handshake of an implicit-TLS listener, and limits the client behind it', async () => {
    const tlsThrough = async () => {
      const c = await RawSmtp.open(lb.port('smtps'), '127.0.0.1', '127.0.0.16');
      open.push(c);
      await c.startTls('mx.ichidan.test');
      return { c, greeting: (await c.reply()).join('\n') };
    };
    const first = await tlsThrough();
    expect(first.greeting).toMatch(/^220 /);
    expect(await first.c.command('EHLO client.test')).toMatch(/^250-/);
    expect((await tlsThrough()).greeting).toMatch(/^421 4\.7\.0 /);
    await first.c.command('QUIT');
    await waitUntil(() => t.logs.some((l) => l.msg === 'connection refused: per-client limit' && l.client === '127.0.0.16' && l.listener === 'smtps'), 5000, 'the refusal logged with the client address');
  });

  it("applies a tenant's network to the client behind the balancer, not to the balancer", async () => {
    const msa = await through('v2', '127.0.0.12');
    expect(await send(msa.c, 'someone@elsewhere.test', 'relayed for acme')).toMatch(/^250 /);
    await msa.c.command('QUIT');
    const stranger = await through('v1', '127.0.0.13');
    expect(await send(stranger.c, 'someone@elsewhere.test', 'not relayed')).toMatch(/^550 5\.7\.1 /);
    await stranger.c.command('QUIT');
  });

  it('refuses a forged PROXY line from an address not in proxyProtocol.from', async () => {
    const c = await RawSmtp.open(t.port('mx'), '127.0.0.1', '127.0.0.5');
    open.push(c);
    expect((await c.reply()).join('\n')).toMatch(/^220 /);
    expect(await c.command('PROXY TCP4 192.0.2.1 127.0.0.1 40000 25')).toMatch(/^554 5\.7\.1 PROXY protocol header not accepted from 127\.0\.0\.5/);
    await waitUntil(() => c.closed, 5000, 'the forged connection to close');
    expect(t.logs.some((l) => l.msg?.toString().startsWith('PROXY header from a client not allowed') && l.client === '127.0.0.5')).toBe(true);
  });

  it('refuses a second PROXY line sent through the balancer', async () => {
    const { c, greeting } = await through('v1', '127.0.0.14');
    expect(greeting).toMatch(/^220 /);
    expect(await c.command('PROXY TCP4 192.0.2.1 127.0.0.1 40000 25')).toMatch(/^554 5\.7\.1 PROXY protocol header not accepted from 127\.0\.0\.14/);
    await waitUntil(() => c.closed, 5000, 'the connection to close');
  });

  it('refuses a forged binary (v2) header from an address not in proxyProtocol.from', async () => {
    const c = await RawSmtp.open(t.port('mx'), '127.0.0.1', '127.0.0.6');
    open.push(c);
    expect((await c.reply()).join('\n')).toMatch(/^220 /);
    const header = Buffer.concat([Buffer.from('0d0a0d0a000d0a515549540a', 'hex'), Buffer.from([0x21, 0x11, 0, 12, 192, 0, 2, 1, 127, 0, 0, 1, 0x9c, 0x40, 0, 25])]);
    c.send(header);
    expect((await c.reply()).join('\n')).toMatch(/^554 5\.7\.1 PROXY protocol header not accepted from 127\.0\.0\.6/);
    await waitUntil(() => c.closed, 5000, 'the connection to close');
    // Nothing of the header was read as commands (its lines would get 500s, its "QUIT" a 221).
    expect(await c.drain(0)).toBe('');
  });

  it('refuses a configured balancer that sends no header in time (421 4.7.0, after proxyProtocol.timeout)', async () => {
    const started = Date.now();
    const c = await RawSmtp.open(t.port('mx'), '127.0.0.1', '127.0.0.1');
    open.push(c);
    expect((await c.reply(5000)).join('\n')).toMatch(/^421 4\.7\.0 mx\.ichidan\.test invalid or missing PROXY protocol header/);
    expect(Date.now() - started).toBeGreaterThanOrEqual(600);
    await waitUntil(() => c.closed, 5000, 'the connection to close');
    expect(t.logs.some((l) => l.msg === 'PROXY header refused: connection closed' && String(l.reason).startsWith('no whole PROXY header within 700 ms'))).toBe(true);
  });

  it.each([
    ['plain SMTP instead of a header', Buffer.from('EHLO sneaky.test\r\n'), 'no PROXY protocol header'],
    ['a malformed v1 line', Buffer.from('PROXY TCP4 not-an-address 127.0.0.1 1 25\r\n'), 'PROXY v1 line: not TCP4 addresses'],
    ['an over-long v1 line', Buffer.from(`PROXY TCP4 ${'9'.repeat(200)}\r\n`), 'PROXY v1 line longer than 107 bytes'],
    ['an oversized v2 header', Buffer.concat([Buffer.from('0d0a0d0a000d0a515549540a', 'hex'), Buffer.from([0x21, 0x11, 0xff, 0xff]), Buffer.alloc(5000)]), 'PROXY v2 header of 65551 bytes (at most 4096)'],
  ])('closes a configured balancer connection carrying %s, and keeps serving', async (_what, bytes, reason) => {
    const c = await RawSmtp.open(t.port('mx'), '127.0.0.1', '127.0.0.1');
    open.push(c);
    c.send(bytes);
    expect((await c.reply(5000)).join('\n')).toMatch(/^421 4\.7\.0 /);
    await waitUntil(() => c.closed, 5000, 'the connection to close');
    expect(t.logs.some((l) => l.msg === 'PROXY header refused: connection closed' && l.reason === reason)).toBe(true);
    const next = await through('v2', '127.0.0.15');
    expect(next.greeting).toMatch(/^220 /);
    await next.c.command('QUIT');
  });
});

describe.skipIf(!available)(`SPF behind HAProxy (skipped when ${HAPROXY_SKIP})`, () => {
  let t: TestApp;
  let sink: Sink;
  let dns: TestDns;
  let lb: Haproxy;

  beforeAll(async () => {
    sink = await startSink({ host: '127.0.0.2' });
    // Only 127.0.0.30 may send for strict.test, whose DMARC policy is reject: HAProxy's own address may not.
    dns = await startDns({
      'strict.test': { txt: ['v=spf1 ip4:127.0.0.30 -all'] },
      '_dmarc.strict.test': { txt: ['v=DMARC1; p=reject'] },
    });
    t = await startApp((dir) => baseConfig(dir, {
      listeners: [{ name: 'mx', role: 'mx', port: 0, proxyProtocol: { from: ['127.0.0.1'], version: 'v2' } }],
      dns: { servers: [dns.server], timeout: '1s' },
      tenants: { demo: { domains: ['example.test'] } },
      routes: { 'example.test': { host: '127.0.0.2', port: sink.port } },
      engines: [{ name: 'auth', type: 'mailauth' }],
    }));
    lb = await startHaproxy([{ name: 'v2', send: 'send-proxy-v2', to: t.port('mx') }]);
  }, 30_000);

  afterAll(async () => {
    await lb?.stop();
    await t?.stop();
    await Promise.all([sink?.close(), dns?.close()]);
  });

  async function sendAs(client: string, subject: string): Promise<string> {
    const c = await RawSmtp.open(lb.port('v2'), '127.0.0.1', client);
    try {
      expect((await c.reply()).join('\n')).toMatch(/^220 /);
      for (const line of ['EHLO client.test', 'MAIL FROM:<ceo@strict.test>', 'RCPT TO:<bob@example.test>', 'DATA']) expect(await c.command(line)).toMatch(/^[23]/);
      c.send(`From: ceo@strict.test\r\nTo: bob@example.test\r\nSubject: ${subject}\r\nMessage-ID: <${subject}@strict.test>\r\nDate: Mon, 07 Dec 2026 00:00:00 +0000\r\n\r\nPlease pay.\r\n.\r\n`);
      return (await c.reply()).join('\n');
    } finally {
      c.close();
    }
  }

  it("checks SPF against the client's address, not the balancer's", async () => {
    expect(await sendAs('127.0.0.30', 'allowed')).toMatch(/^250 /);
    await waitUntil(() => sink.messages.some((m) => m.data.includes('Subject: allowed')), 15_000, 'the message at the sink');
    const head = sink.messages.find((m) => m.data.includes('Subject: allowed'))!.data.toString().split('\r\n\r\n')[0];
    expect(head).toMatch(/Authentication-Results: mx\.ichidan\.test;[\s\S]*spf=pass[\s\S]*smtp\.mailfrom=ceo@strict\.test/);
    expect(await sendAs('127.0.0.31', 'forged')).toMatch(/^550 5\.7\.1 message refused: dmarc=fail \(p=reject\) header\.from=strict\.test/);
  });
});
