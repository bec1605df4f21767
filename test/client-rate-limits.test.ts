// Per-client rates over raw sockets from chosen 127.0.0.x addresses: new connections per minute
// (421 4.7.0) and messages per client (450 4.7.1 at MAIL FROM), other clients unaffected.
import { afterEach, describe, expect, it } from 'vitest';
import { type TestApp } from './helpers/app.js';
import { edgeClients } from './helpers/edge-clients.js';

describe('edge limits: rates per client', () => {
  let t: TestApp | undefined;
  const { start, connect, closeAll } = edgeClients(() => t);
  afterEach(async () => {
    closeAll();
    await t?.stop();
    t = undefined;
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
});
