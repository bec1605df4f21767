import { createServer, type Server } from 'node:net';
import pino from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { parseConfig } from '../index.js';
import { RawSmtp } from '../../test/helpers/raw-smtp.js';
import { SmtpPool } from '../../delivery/smtp/smtp-pool.js';
import { Policy } from '../ingress/ingress-policy.js';
import { ProxyListener } from './proxy-listener.js';
import type { ProxyDeps } from './proxy-destination.js';

const closers: Array<() => Promise<unknown>> = [];
afterEach(async () => {
  for (const c of closers.splice(0).reverse()) await c();
});

/** A destination that takes any transaction. */
async function destination(): Promise<number> {
  const server: Server = createServer((s) => {
    s.write('220 dest.test\r\n');
    s.on('data', (d) => {
      for (const line of d.toString().split('\r\n').filter(Boolean)) s.write(/^EHLO/i.test(line) ? '250-dest.test\r\n250 PIPELINING\r\n' : /^QUIT/i.test(line) ? '221 bye\r\n' : '250 ok\r\n');
    });
    s.on('error', () => undefined);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  closers.push(() => new Promise((r) => server.close(r)));
  return (server.address() as { port: number }).port;
}

/**
 * A proxy listener whose collaborators fail in ways no test input should be able to cause: the
 * tenant lookup throws for the client on port `badPort`, and the TLS planner throws for domain
 * `broken.test`. Every other dependency is plain.
 */
async function listener(destPort: number, badPort: { value: number }) {
  const config = parseConfig({ dataDir: '/nonexistent', listeners: [{ name: 'proxy', role: 'proxy', port: 0, tls: 'none' }] }, 'test');
  const site = { key: 'addr:test', limits: { maxConnections: 5, initialConnections: 5 }, messagesPerConnection: 100, idleTimeout: 5_000, slowReply: 60_000 };
  const logs: Array<Record<string, unknown>> = [];
  const log = pino({ level: 'info' }, { write: (line: string) => { logs.push(JSON.parse(line)); } });
  const session = (): ProxyDeps => ({
    heloName: 'proxy.test', connectTimeout: 5_000, replyTimeout: 5_000, ca: undefined,
    route: async () => { throw new Error('no route'); },
    tlsPlan: async (domain) => {
      if (domain === 'broken.test') throw new Error('internal inconsistency in the TLS planner');
      return { kind: 'hops', hops: [{ hop: { name: '127.0.0.1', addresses: ['127.0.0.1'], port: destPort, protocol: 'smtp' }, tls: { level: 'none', rule: 'none', audit: null } }] } as never;
    },
    siteLimits: () => site as never,
    known: () => undefined,
    acquire: async () => ({ site: site.key, source: { address: null, helo: null }, release: () => undefined }),
    transcripts: null,
    signal: () => undefined,
    admit: () => null,
    connections: () => undefined,
    outbound: new Set(),
    pool: new SmtpPool(),
  });
  const proxy = new ProxyListener(config.listeners[0], {
    scanner: () => null,
    config: () => config,
    policy: () => new Policy(config),
    tenantOf: (address) => {
      if (badPort.value !== 0) throw new Error('tenant table corrupt');
      return address ? 'legacy' : undefined;
    },
    session,
    ownEndpoints: () => [],
    outbound: new Set(),
    reader: () => ({ address: '127.0.0.1', port: destPort, family: 4 }),
    lineGuard: () => ({ feed() {}, finish() {}, bare: false }),
    tls: {} as never,
    log,
  });
  const where = await proxy.listen();
  closers.push(() => proxy.close());
  return { port: where.port, logs };
}

describe('proxy listener guard', () => {
  it('an unexpected error in one session is logged and closes that session (421 4.3.0), never the listener or other sessions', async () => {
    const destPort = await destination();
    const bad = { value: 0 };
    const { port, logs } = await listener(destPort, bad);

    // a session open before the failures, mid-transaction
    const other = await RawSmtp.open(port);
    await other.reply();
    expect(await other.command('EHLO other.test')).toMatch(/^250/);
    expect(await other.command('MAIL FROM:<o@legacy.test>')).toMatch(/^250/);

    // a throw in the connect handler
    bad.value = 1;
    const first = await RawSmtp.open(port);
    expect((await first.reply()).join('\n')).toMatch(/^421 4\.3\.0 /);
    bad.value = 0;

    // a rejection in the middle of a relayed command, with the destination connection open
    const second = await RawSmtp.open(port);
    await second.reply();
    expect(await second.command('EHLO two.test')).toMatch(/^250/);
    expect(await second.command('MAIL FROM:<a@legacy.test>')).toMatch(/^250/);
    expect(await second.command('RCPT TO:<x@broken.test>')).toMatch(/^421 4\.3\.0 /);
    await new Promise((r) => setTimeout(r, 100));
    expect(second.closed).toBe(true);

    expect(logs.filter((l) => l.msg === 'proxy session failed; closing it')).toHaveLength(2);
    // the other session goes on
    expect(await other.command('RCPT TO:<y@fine.test>')).toMatch(/^250/);
    expect(await other.command('DATA')).toMatch(/^354/);
    expect(await other.command('Subject: fine\r\n\r\nbody\r\n.')).toMatch(/^250/);
    other.close();
  });
});
