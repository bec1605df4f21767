// Deadlines that trickling bytes do not reset: limits.commandDeadline for a command line (in plain
// text and inside TLS) and limits.minDataRate for DATA, each ended with 421 4.4.2; either can be
// switched off with 0.
import { afterEach, describe, expect, it } from 'vitest';
import { waitUntil, type TestApp } from './helpers/app.js';
import { edgeClients, sleep } from './helpers/edge-clients.js';
import { RawSmtp } from './helpers/raw-smtp.js';

describe('edge limits: command deadline and data rate', () => {
  let t: TestApp | undefined;
  const { open, start, connect, atData, closeAll } = edgeClients(() => t);
  afterEach(async () => {
    closeAll();
    await t?.stop();
    t = undefined;
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
