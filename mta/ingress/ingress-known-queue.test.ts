// Known senders' own accept queue against the real kernel: two sockets on one port, the program
// choosing by the client's source address (loopback has all of 127.0.0.0/8 to connect from).
import { closeSync } from 'node:fs';
import { createServer, connect, type Server, type Socket } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { KnownQueue, loadReuseport, type ReuseportAddon } from './ingress-known-queue.js';

const loaded = loadReuseport();
if ('error' in loaded) throw new Error(`the reuseport addon is needed here: ${loaded.error}`);
const addon: ReuseportAddon = loaded;

interface Arrival {
  queue: 'known' | 'general';
  from: string;
}

describe('KnownQueue', () => {
  const closers: Array<() => void> = [];
  afterEach(() => {
    for (const close of closers.splice(0)) close();
  });

  /** A known queue on `address` whose connections and the general queue's (when `accept`) are noted in arrival order. */
  async function open(address: string, networks: string[], accept = true) {
    const arrivals: Arrival[] = [];
    const note = (queue: Arrival['queue']) => (socket: Socket) => {
      arrivals.push({ queue, from: socket.remoteAddress!.replace(/^::ffff:/, '') });
      socket.end('220 hi\r\n');
    };
    const { queue, generalFd } = await KnownQueue.open(addon, { address, port: 0, backlog: 64 }, networks, note('known'));
    closers.push(() => queue.close());
    let general: Server | null = null;
    if (accept) {
      general = createServer(note('general'));
      await new Promise<void>((resolve) => general!.listen({ fd: generalFd }, resolve));
      closers.push(() => general!.close());
    } else closers.push(() => closeSync(generalFd));
    const port = (queue.server.address() as { port: number }).port;
    return { queue, arrivals, port, generalFd };
  }

  /** A connection from `from` to the port; resolves with the first line it reads (or '' when none comes in time). */
  function dial(port: number, from: string, host = '127.0.0.1', waitMs = 2000): Promise<string> {
    return new Promise((resolve) => {
      const c = connect({ host, port, localAddress: from });
      closers.push(() => c.destroy());
      const timer = setTimeout(() => resolve(''), waitMs);
      c.on('data', (d) => { clearTimeout(timer); resolve(d.toString().trim()); c.destroy(); });
      c.on('error', () => { clearTimeout(timer); resolve('error'); });
    });
  }

  it('takes the networks\' connections on its own queue and every other on the general one, and follows a new program', async () => {
    const { queue, arrivals, port } = await open('127.0.0.1', ['127.10.1.0/24', '127.20.0.5']);
    for (const from of ['127.10.1.5', '127.64.0.9', '127.10.1.200', '127.20.0.5', '127.20.0.6', '127.0.0.1']) expect(await dial(port, from)).toBe('220 hi');
    expect(arrivals).toEqual([
      { queue: 'known', from: '127.10.1.5' }, { queue: 'general', from: '127.64.0.9' }, { queue: 'known', from: '127.10.1.200' },
      { queue: 'known', from: '127.20.0.5' }, { queue: 'general', from: '127.20.0.6' }, { queue: 'general', from: '127.0.0.1' },
    ]);
    expect(queue.status()).toEqual({ networks: 2, left: 0, accepted: 3 });
    queue.steer(['127.64.0.0/10']);
    arrivals.length = 0;
    for (const from of ['127.10.1.5', '127.64.0.9', '127.100.3.3']) await dial(port, from);
    expect(arrivals.map((a) => a.queue)).toEqual(['general', 'known', 'known']);
    queue.steer([]);
    arrivals.length = 0;
    await dial(port, '127.64.0.9');
    expect(arrivals).toEqual([{ queue: 'general', from: '127.64.0.9' }]);
    expect(queue.status()).toEqual({ networks: 0, left: 0, accepted: 5 });
  });

  it('serves a known sender at once while the general queue is full of connections nobody accepts', async () => {
    const { arrivals, port } = await open('127.0.0.1', ['127.10.1.0/24'], false);
    // The flood: connections the kernel completes and holds in the general queue, never accepted.
    const flood = await Promise.all(Array.from({ length: 40 }, (_, i) => dial(port, `127.64.${i}.1`, '127.0.0.1', 300)));
    expect(flood.every((line) => line === '')).toBe(true);
    const t0 = Date.now();
    expect(await dial(port, '127.10.1.7')).toBe('220 hi');
    expect(Date.now() - t0).toBeLessThan(1000);
    expect(arrivals).toEqual([{ queue: 'known', from: '127.10.1.7' }]);
  });

  it('steers IPv6 clients by their network', async () => {
    const { arrivals, port } = await open('::1', ['::/64']);
    expect(await dial(port, '::1', '::1')).toBe('220 hi');
    const other = await open('::1', ['2001:db8::/64']);
    expect(await dial(other.port, '::1', '::1')).toBe('220 hi');
    expect(arrivals).toEqual([{ queue: 'known', from: '::1' }]);
    expect(other.arrivals).toEqual([{ queue: 'general', from: '::1' }]);
  });

  it('refuses a port another socket listens on (no second process joins the group), naming the errno', async () => {
    const taken = createServer();
    await new Promise<void>((resolve) => taken.listen(0, '127.0.0.1', resolve));
    closers.push(() => taken.close());
    const port = (taken.address() as { port: number }).port;
    await expect(KnownQueue.open(addon, { address: '127.0.0.1', port, backlog: 8 }, [], () => undefined)).rejects.toMatchObject({ code: 'EADDRINUSE' });
    const mine = await open('127.0.0.1', []);
    await expect(KnownQueue.open(addon, { address: '127.0.0.1', port: mine.port, backlog: 8 }, [], () => undefined)).rejects.toMatchObject({ code: 'EADDRINUSE' });
  });

  it('keeps the program in force when the kernel refuses a new one, and says why', async () => {
    const { queue, arrivals, port } = await open('127.0.0.1', ['127.10.1.0/24']);
    const bad = Buffer.alloc(8); // one instruction, opcode 0 (ld #0) and no return: the kernel's checker refuses it
    expect(() => addon.steer((queue as unknown as { fd: number }).fd, bad)).toThrow(/SO_ATTACH_REUSEPORT_CBPF.*EINVAL/);
    await dial(port, '127.10.1.9');
    expect(arrivals).toEqual([{ queue: 'known', from: '127.10.1.9' }]);
    expect(() => addon.listenShared('not an address', 0, 8, 2)).toThrow(/IPv4 or IPv6/);
  });
});
