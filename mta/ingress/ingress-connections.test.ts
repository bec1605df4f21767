// A connection's state ends with it: an AUTH answer held back by its penalty is dropped when the
// client leaves, and its per-address slot is given back.
import { EventEmitter } from 'node:events';
import type { Socket } from 'node:net';
import { PassThrough } from 'node:stream';
import pino from 'pino';
import type { SMTPServerSession } from 'smtp-server';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { parseConfig } from '../mta-config.js';
import { ConnectionTable, type Connection } from './ingress-connections.js';
import type { Policy } from './ingress-policy.js';

describe('ConnectionTable', () => {
  beforeEach(() => { vi.useFakeTimers(); });
  afterEach(() => { vi.useRealTimers(); });

  const config = parseConfig({ limits: { client: { maxConnections: 1, exceptions: [] } } });
  const table = () => new ConnectionTable('mx', () => ({ config, policy: {} as Policy }), pino({ level: 'silent' }));
  const connection = (id: string): Connection => ({ id, send: () => undefined, close: () => undefined });
  const session = (id: string, remoteAddress: string) => ({ id, remoteAddress }) as SMTPServerSession;

  it('drops a held-back AUTH answer when the session closes', () => {
    const t = table();
    t.watch(connection('s1'), new EventEmitter() as unknown as Socket);
    const answered: string[] = [];
    t.answerLater('s1', 5000, () => answered.push('s1'));
    t.watch(connection('s2'), new EventEmitter() as unknown as Socket);
    t.answerLater('s2', 5000, () => answered.push('s2'));
    vi.advanceTimersByTime(1000);
    t.closed('s1');
    vi.advanceTimersByTime(10_000);
    expect(answered).toEqual(['s2']);
  });

  it('ends DATA that is too slow before anything reads it without an unheard error event', async () => {
    const slow = parseConfig({ limits: { commandDeadline: '1s', minDataRate: 1000 } });
    const t = new ConnectionTable('proxy', () => ({ config: slow, policy: {} as Policy }), pino({ level: 'silent' }));
    const sent: string[] = [];
    t.watch({ id: 's1', send: (code, text) => sent.push(`${code} ${text}`), close: () => undefined }, new EventEmitter() as unknown as Socket);
    const data = new PassThrough();
    t.dataStarted('s1', data);
    // Nothing listens on the stream yet (the handler is still opening its spool file): an 'error'
    // emitted now with no listener would end the process.
    vi.advanceTimersByTime(5_000);
    await vi.runAllTimersAsync();
    expect(data.destroyed).toBe(true);
    expect(sent[0]).toMatch(/^421 4\.4\.2 /);
    t.closed('s1');
  });

  it('gives the slot back at close, under the key it was counted by', () => {
    const t = table();
    t.watch(connection('s1'), new EventEmitter() as unknown as Socket);
    expect(t.admit(session('s1', '2001:db8::1'))).toBeNull();
    expect(t.admit(session('s2', '2001:db8::2'))?.enhanced).toBe('4.7.0');
    t.closed('s2');
    expect(t.admit(session('s3', '2001:db8::3'))?.enhanced).toBe('4.7.0');
    t.closed('s1');
    expect(t.admit(session('s4', '2001:db8::4'))).toBeNull();
  });
});

describe('WatchedServer', () => {
  it('tells its owner of each connection with its own socket, never another session\'s', async () => {
    const { WatchedServer } = await import('./ingress-connections.js');
    const { connect } = await import('node:net');
    let n = 0;
    const server = new WatchedServer({
      logger: false, disabledCommands: ['STARTTLS', 'AUTH'], greetingDelay: 0, disableReverseLookup: true,
      // The second client is refused in onConnect, which runs before connect() returns (no delay, no reverse lookup).
      onConnect: (_s: unknown, cb: (err?: Error) => void) => (++n === 2 ? cb(Object.assign(new Error('go away'), { responseCode: 421 })) : cb()),
    } as never);
    const told: Array<{ id: string; socket: Socket }> = [];
    server.onConnection = (c, socket) => told.push({ id: c.id, socket });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const port = (server.server.address() as { port: number }).port;
    const client = () => new Promise<{ s: Socket; greeting: string }>((resolve) => {
      const s = connect({ host: '127.0.0.1', port });
      s.once('data', (d) => resolve({ s, greeting: String(d) }));
    });
    const clients: Socket[] = [];
    try {
      const a = await client();
      clients.push(a.s);
      expect(a.greeting).toMatch(/^220 /);
      const b = await client();
      clients.push(b.s);
      expect(b.greeting).toMatch(/^421 /);
      // Each connection told of (the refused one may be, while it closes) comes with its own socket.
      expect(told.length).toBeGreaterThanOrEqual(1);
      expect(told[0].socket.remotePort).toBe(a.s.localPort);
      if (told.length > 1) expect(told[1].socket.remotePort).toBe(b.s.localPort);
      expect(new Set(told.map((t) => t.id)).size).toBe(told.length);
    } finally {
      for (const c of clients) c.destroy();
      await new Promise<void>((r) => server.close(() => r()));
    }
  });
});
