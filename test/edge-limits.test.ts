// Per-client limits (connections, connection rate, message rate) and the deadlines that trickling
// bytes do not reset, over raw sockets from chosen 127.0.0.x addresses.
import { afterEach, describe, expect, it } from 'vitest';
import { baseConfig, startApp, waitUntil, type TestApp } from './helpers/app.js';
import { RawSmtp } from './helpers/raw-smtp.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('edge limits', () => {
  let t: TestApp | undefined;
  const open: RawSmtp[] = [];
  afterEach(async () => {
    for (const c of open.splice(0)) c.close();
    await t?.stop();
    t = undefined;
  });

  const start = (extra: Record<string, unknown>) => startApp((dir) => baseConfig(dir, {
    tenants: { alpha: { domains: ['alpha.test'] } },
    routes: { 'alpha.test': { hold: true } },
    ...extra,
  }));

  async function connect(from: string): Promise<{ c: RawSmtp; greeting: string }> {
    const c = await RawSmtp.open(t!.port('mx'), '127.0.0.1', from);
    open.push(c);
    return { c, greeting: (await c.reply()).join('\n') };
  }

  it('refuses a client past its simultaneous connections with 421 4.7.0, and only that client', async () => {
    t = await start({ limits: { client: { maxConnections: 3 } } });
    for (let i = 0; i < 3; i++) expect((await connect('127.0.0.20')).greeting).toMatch(/^220 /);
    const extra = await connect('127.0.0.20');
    expect(extra.greeting).toMatch(/^421 4\.7\.0 /);
    await waitUntil(() => extra.c.closed, 2000, 'the refused connection to close');
    expect((await connect('127.0.0.21')).greeting).toMatch(/^220 /);
    open[0].close();
    await sleep(200);
    expect((await connect('127.0.0.20')).greeting).toMatch(/^220 /);
  });

  it('does not let tricklers from one address take every slot of the listener (defaults)', async () => {
    t = await startApp((dir) => baseConfig(dir, {
      listeners: [{ name: 'mx', role: 'mx', port: 0, maxClients: 60 }],
      tenants: { alpha: { domains: ['alpha.test'] } },
      routes: { 'alpha.test': { hold: true } },
    }));
    const greetings: string[] = [];
    for (let i = 0; i < 70; i++) {
      const { c, greeting } = await connect('127.0.0.40');
      greetings.push(greeting.slice(0, 9));
      if (!c.closed) c.send('E');
    }
    expect(greetings.filter((g) => g.startsWith('220')).length).toBe(50);
    expect(greetings.filter((g) => g === '421 4.7.0').length).toBe(20);
    const legit = await RawSmtp.atData(t.port('mx'), 'a@remote.test', ['user@alpha.test']);
    open.push(legit);
    expect(await legit.finishData('Subject: still served\r\n\r\nhello\r\n')).toMatch(/^\w+$/);
  });

  async function atData(from: string): Promise<RawSmtp> {
    const { c, greeting } = await connect(from);
    expect(greeting).toMatch(/^220 /);
    for (const line of ['EHLO client.test', 'MAIL FROM:<a@remote.test>', 'RCPT TO:<user@alpha.test>', 'DATA']) expect(await c.command(line)).toMatch(/^[23]/);
    return c;
  }

  /** `limit` new connections from `from` are greeted and the next one is refused: every slot is free again. */
  async function slotsFree(from: string, limit: number): Promise<void> {
    const fresh: RawSmtp[] = [];
    for (let i = 0; i < limit; i++) {
      const { c, greeting } = await connect(from);
      expect(greeting).toMatch(/^220 /);
      fresh.push(c);
    }
    expect((await connect(from)).greeting).toMatch(/^421 4\.7\.0 /);
    for (const c of fresh) c.close();
    await sleep(200);
  }

  it('gives a slot back after a deadline breach, a reset in the middle of DATA and a refused connection', async () => {
    t = await start({ limits: { commandDeadline: '500ms', minDataRate: 1000, client: { maxConnections: 2 } } });
    // Deadline breaches: one on a command line, one in DATA.
    const { c: line } = await connect('127.0.0.30');
    line.send('NOOP');
    const data = await atData('127.0.0.30');
    data.send('Subject: stalled\r\n');
    expect((await line.reply()).join('\n')).toMatch(/^421 4\.4\.2 /);
    expect((await data.reply()).join('\n')).toMatch(/^421 4\.4\.2 /);
    await waitUntil(() => line.closed && data.closed, 2000, 'the breached connections to close');
    await sleep(200);
    await slotsFree('127.0.0.30', 2);
    // A reset while the message streams in.
    const reset = await atData('127.0.0.31');
    reset.send('Subject: cut\r\n\r\n' + 'x'.repeat(10_000));
    await sleep(100);
    (reset.socket as import('node:net').Socket).resetAndDestroy();
    await sleep(300);
    await slotsFree('127.0.0.31', 2);
    // Refused connections (past maxConnections) do not take a slot, nor give one back twice.
    const kept = [await connect('127.0.0.32'), await connect('127.0.0.32')];
    for (let i = 0; i < 3; i++) expect((await connect('127.0.0.32')).greeting).toMatch(/^421 4\.7\.0 /);
    for (const k of kept) k.c.close();
    await sleep(300);
    await slotsFree('127.0.0.32', 2);
  });

  it('frees the slots of tricklers its deadline ends', async () => {
    t = await start({ limits: { commandDeadline: '1s', client: { maxConnections: 3 } } });
    const tricklers: RawSmtp[] = [];
    for (let i = 0; i < 3; i++) {
      const { c, greeting } = await connect('127.0.0.41');
      expect(greeting).toMatch(/^220 /);
      c.send('E');
      tricklers.push(c);
    }
    expect((await connect('127.0.0.41')).greeting).toMatch(/^421 4\.7\.0 /);
    for (const c of tricklers) expect((await c.reply()).join('\n')).toMatch(/^421 4\.4\.2 /);
    await waitUntil(() => tricklers.every((c) => c.closed), 2000, 'the tricklers to be closed');
    await sleep(200);
    await slotsFree('127.0.0.41', 3);
  });

  it('takes mail with limits.commandDeadline 0 (line deadline off), and still ends a DATA slower than minDataRate', async () => {
    t = await start({ limits: { commandDeadline: 0, commandTimeout: '1s', minDataRate: 1000 } });
    const c = await atData('127.0.0.33');
    expect(await c.finishData('Subject: deadline off\r\n\r\nhello\r\n')).toMatch(/^\w+$/);
    // The data rate's grace is then commandTimeout: bytes trickling in keep the idle timeout away, not the rate.
    const slow = await atData('127.0.0.34');
    const started = Date.now();
    for (let i = 0; i < 30 && !slow.closed; i++) {
      slow.send('0123456789');
      await sleep(200);
    }
    expect((await slow.reply()).join('\n')).toMatch(/^421 4\.4\.2 /);
    expect(Date.now() - started).toBeGreaterThan(900);
  });

  it('lets a slow DATA finish with limits.minDataRate 0', async () => {
    t = await start({ limits: { commandDeadline: '500ms', minDataRate: 0 } });
    const c = await atData('127.0.0.35');
    c.send('Subject: slow but allowed\r\n\r\n');
    for (let i = 0; i < 8; i++) {
      c.send('0123456789');
      await sleep(200);
    }
    expect(c.closed).toBe(false);
    expect(await c.finishData('\r\n')).toMatch(/^\w+$/);
  });

  it('refuses a client past its new connections per minute with 421 4.7.0', async () => {
    t = await start({ limits: { client: { connectionRate: 4 } } });
    for (let i = 0; i < 4; i++) {
      const { c, greeting } = await connect('127.0.0.22');
      expect(greeting).toMatch(/^220 /);
      await c.command('QUIT');
    }
    expect((await connect('127.0.0.22')).greeting).toMatch(/^421 4\.7\.0 /);
    expect((await connect('127.0.0.23')).greeting).toMatch(/^220 /);
  });

  it('answers MAIL FROM past the message rate with 450 4.7.1', async () => {
    t = await start({ limits: { client: { messageRate: 3 } } });
    const { c } = await connect('127.0.0.24');
    expect(await c.command('EHLO client.test')).toMatch(/^250/);
    for (let i = 0; i < 3; i++) {
      expect(await c.command('MAIL FROM:<a@remote.test>')).toMatch(/^250 /);
      expect(await c.command('RSET')).toMatch(/^250 /);
    }
    expect(await c.command('MAIL FROM:<a@remote.test>')).toMatch(/^450 4\.7\.1 /);
    const other = (await connect('127.0.0.25')).c;
    expect(await other.command('EHLO client.test')).toMatch(/^250/);
    expect(await other.command('MAIL FROM:<a@remote.test>')).toMatch(/^250 /);
  });

  it('leaves trusted networks alone by default, and limits them when exceptions say so', async () => {
    t = await start({ trustedNetworks: ['127.0.0.26'], limits: { client: { maxConnections: 1 } } });
    for (let i = 0; i < 3; i++) expect((await connect('127.0.0.26')).greeting).toMatch(/^220 /);
    for (const c of open.splice(0)) c.close();
    await t.stop();
    t = await start({ trustedNetworks: ['127.0.0.26'], limits: { client: { maxConnections: 1, exceptions: [] } } });
    expect((await connect('127.0.0.26')).greeting).toMatch(/^220 /);
    expect((await connect('127.0.0.26')).greeting).toMatch(/^421 4\.7\.0 /);
  });

  it('closes a connection whose command line trickles in past limits.commandDeadline with 421 4.4.2', async () => {
    t = await start({ limits: { commandDeadline: '1s' } });
    const { c } = await connect('127.0.0.27');
    expect(await c.command('EHLO client.test')).toMatch(/^250/);
    const started = Date.now();
    const line = 'NOOP trickling along\r\n';
    for (const ch of line) {
      if (c.closed) break;
      c.send(ch);
      await sleep(150);
    }
    const reply = (await c.reply()).join('\n');
    expect(reply).toMatch(/^421 4\.4\.2 /);
    await waitUntil(() => c.closed, 2000, 'the connection to close');
    expect(Date.now() - started).toBeLessThan(2500);
    // The same inside TLS: after STARTTLS the deadline watches the decrypted bytes.
    const { c: tls } = await connect('127.0.0.29');
    expect(await tls.command('EHLO client.test')).toMatch(/^250/);
    expect(await tls.command('STARTTLS')).toMatch(/^220 /);
    await tls.startTls();
    expect(await tls.command('EHLO client.test')).toMatch(/^250/);
    for (const ch of line) {
      if (tls.closed) break;
      tls.send(ch);
      await sleep(150);
    }
    expect((await tls.reply()).join('\n')).toMatch(/^421 4\.4\.2 /);
    // Whole lines, however slowly they follow each other, are not a breach.
    const { c: calm } = await connect('127.0.0.28');
    for (let i = 0; i < 3; i++) {
      await sleep(600);
      expect(await calm.command('NOOP')).toMatch(/^250/);
    }
  });

  it('closes a DATA phase slower than limits.minDataRate with 421 4.4.2, and takes a normal one', async () => {
    t = await start({ limits: { commandDeadline: '1s', minDataRate: 1000 } });
    const slow = await RawSmtp.atData(t.port('mx'), 'a@remote.test', ['user@alpha.test']);
    open.push(slow);
    slow.send('Subject: slow\r\n\r\n');
    for (let i = 0; i < 30 && !slow.closed; i++) {
      slow.send('0123456789');
      await sleep(200);
    }
    expect((await slow.reply()).join('\n')).toMatch(/^421 4\.4\.2 /);
    await waitUntil(() => slow.closed, 2000, 'the connection to close');
    const fast = await RawSmtp.atData(t.port('mx'), 'a@remote.test', ['user@alpha.test']);
    open.push(fast);
    expect(await fast.finishData(`Subject: fast\r\n\r\n${'x'.repeat(70)}\r\n`)).toMatch(/^\w+$/);
  });
});
