// Per-client connection limits over raw sockets from chosen 127.0.0.x addresses: simultaneous
// connections (limits.client.maxConnections, an address's share of a listener's maxClients), slots
// given back after deadline breaches, resets and refusals, and trusted networks exempt unless
// limits.client.exceptions says otherwise.
import { afterEach, describe, expect, it } from 'vitest';
import { baseConfig, startApp, waitUntil, type TestApp } from './helpers/app.js';
import { edgeClients, sleep } from './helpers/edge-clients.js';
import { RawSmtp } from './helpers/raw-smtp.js';

describe('edge limits: connections per client', () => {
  let t: TestApp | undefined;
  const { open, start, connect, atData, slotsFree, closeAll } = edgeClients(() => t);
  afterEach(async () => {
    closeAll();
    await t?.stop();
    t = undefined;
  });

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
      // The per-address limit alone: no sessions set aside for known senders (test/admission-door.test.ts).
      admission: { reserve: { sessions: 0 } },
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

  it('leaves trusted networks alone by default, and limits them when exceptions say so', async () => {
    t = await start({ trustedNetworks: ['127.0.0.26'], limits: { client: { maxConnections: 1 } } });
    for (let i = 0; i < 3; i++) expect((await connect('127.0.0.26')).greeting).toMatch(/^220 /);
    for (const c of open.splice(0)) c.close();
    await t.stop();
    t = await start({ trustedNetworks: ['127.0.0.26'], limits: { client: { maxConnections: 1, exceptions: [] } } });
    expect((await connect('127.0.0.26')).greeting).toMatch(/^220 /);
    expect((await connect('127.0.0.26')).greeting).toMatch(/^421 4\.7\.0 /);
  });
});
