import { createServer, type Server } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { SmtpConnection } from './smtp-connection.js';

const quiet = { trace() {}, debug() {}, info() {}, warn() {}, error() {}, fatal() {} };
const servers: Server[] = [];
afterEach(async () => {
  for (const s of servers.splice(0)) await new Promise((r) => s.close(r));
});

/** A destination that answers EHLO and drops the connection on QUIT without its 221. */
async function dropsOnQuit(): Promise<number> {
  const server = createServer((s) => {
    s.write('220 drop.test\r\n');
    s.on('data', (d) => {
      if (/^QUIT/m.test(d.toString())) s.destroy();
      else s.write('250 ok\r\n');
    });
    s.on('error', () => undefined);
  });
  servers.push(server);
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  return (server.address() as { port: number }).port;
}

describe('SMTP connection', () => {
  it('ends QUIT at once when the destination closes without its 221, leaving no reply timer behind', async () => {
    const port = await dropsOnQuit();
    const client = new SmtpConnection({ address: '127.0.0.1', port, connectTimeout: 5_000, replyTimeout: 60_000, logger: quiet });
    await client.connect();
    expect((await client.hello('proxy.test')).code).toBe(250);
    const started = Date.now();
    await client.quit();
    expect(Date.now() - started).toBeLessThan(2_000);
    expect(client.ended).toBe(true);
  });

  it('refuses a second command while one still waits for its reply, so replies never pair with the wrong command', async () => {
    const port = await dropsOnQuit();
    const client = new SmtpConnection({ address: '127.0.0.1', port, connectTimeout: 5_000, replyTimeout: 60_000, logger: quiet });
    await client.connect();
    const first = client.command('NOOP');
    await expect(client.command('RSET')).rejects.toMatchObject({ code: 'EBUSY' });
    expect((await first).code).toBe(250);
    client.close();
  });
});
