// Known senders' own accept queue against the real kernel: two sockets on one port, the program
// choosing by the client's source address (loopback has all of 127.0.0.0/8 to connect from).
import { spawn } from 'node:child_process';
import { closeSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { createServer, connect, type Server, type Socket } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { KnownQueue, loadReuseport, type ReuseportAddon } from './ingress-known-queue.js';

const loaded = loadReuseport();
if ('error' in loaded) throw new Error(`the reuseport addon is needed here: ${loaded.error}`);
const addon: ReuseportAddon = loaded;

const REFUSAL = '421 4.7.0 server busy with other mail, try again later';
const DRAINING = '421 4.3.2 this server is being drained and takes no new mail, try another';
const steer = (networks: string[], more: { blocked?: string[]; refuseOthers?: boolean; surgeAt?: number; refusal?: string } = {}) =>
  ({ networks, blocked: more.blocked ?? [], refuseOthers: more.refuseOthers ?? false, surgeAt: more.surgeAt ?? null, refusal: more.refusal ?? REFUSAL });

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
    const { queue, generalFd } = await KnownQueue.open(addon, { address, port: 0, backlog: 64 }, steer(networks), note('known'));
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
    expect(queue.status()).toEqual({ networks: 2, left: 0, accepted: 3, refusing: false, refused: 0, surges: 0 });
    queue.steer(steer(['127.64.0.0/10']));
    arrivals.length = 0;
    for (const from of ['127.10.1.5', '127.64.0.9', '127.100.3.3']) await dial(port, from);
    expect(arrivals.map((a) => a.queue)).toEqual(['general', 'known', 'known']);
    queue.steer(steer([]));
    arrivals.length = 0;
    await dial(port, '127.64.0.9');
    expect(arrivals).toEqual([{ queue: 'general', from: '127.64.0.9' }]);
    expect(queue.status()).toEqual({ networks: 0, left: 0, accepted: 5, refusing: false, refused: 0, surges: 0 });
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

  it('under overload answers everyone else 421 from its own thread, the known and the blocked still reaching Node, and counts them', async () => {
    const { queue, arrivals, port } = await open('127.0.0.1', ['127.10.1.0/24'], true);
    queue.steer(steer(['127.10.0.0/16'], { blocked: ['127.10.9.0/24'], refuseOthers: true }));
    expect(queue.status()).toMatchObject({ refusing: true, refused: 0 });
    const replies = await Promise.all(Array.from({ length: 30 }, (_, i) => dial(port, `127.64.${i}.1`)));
    expect(replies.every((r) => r === REFUSAL)).toBe(true);
    expect(await dial(port, '127.10.1.7')).toBe('220 hi');
    expect(await dial(port, '127.10.9.7')).toBe('220 hi');
    expect(arrivals).toEqual([{ queue: 'known', from: '127.10.1.7' }, { queue: 'general', from: '127.10.9.7' }]);
    expect(queue.status()).toMatchObject({ refusing: true, refused: 30 });
    // A client that says more after the 421 is read and let go; the thread goes on answering.
    const talker = connect({ host: '127.0.0.1', port, localAddress: '127.65.0.1' });
    closers.push(() => talker.destroy());
    const ended = new Promise((resolve) => talker.on('end', resolve));
    const first = await new Promise<string>((resolve) => talker.once('data', (d) => resolve(d.toString())));
    expect(first).toBe(`${REFUSAL}\r\n`);
    talker.write('EHLO talker.test\r\nQUIT\r\n');
    await ended;
    talker.end();
    expect(await dial(port, '127.66.0.1')).toBe(REFUSAL);
    // The node drains meanwhile: the thread answers with the door's draining reply from now on.
    queue.steer(steer(['127.10.0.0/16'], { blocked: ['127.10.9.0/24'], refuseOthers: true, refusal: DRAINING }));
    expect(await dial(port, '127.66.0.2')).toBe(DRAINING);
    // Out of overload: everyone reaches Node again.
    queue.steer(steer(['127.10.0.0/16']));
    expect(await dial(port, '127.64.0.1')).toBe('220 hi');
    expect(queue.status()).toMatchObject({ refusing: false, refused: 33 });
  });

  it('guards the general queue: once it holds surgeAt connections, everyone else is refused by the thread at once, the known still served, until the surge is taken in', async () => {
    // Nobody accepts on the general queue: it fills as an event loop too busy to accept would leave it.
    const { queue, arrivals, port } = await open('127.0.0.1', ['127.10.1.0/24'], false);
    queue.steer(steer(['127.10.1.0/24'], { surgeAt: 8 }));
    const waiting = await Promise.all(Array.from({ length: 7 }, (_, i) => dial(port, `127.64.${i}.1`, '127.0.0.1', 300)));
    expect(waiting.every((line) => line === '')).toBe(true);
    expect(queue.status()).toMatchObject({ refusing: false, surges: 0 });
    // The eighth fills it to the surge: the thread sees it within milliseconds and refuses the rest.
    expect(await dial(port, '127.64.7.1', '127.0.0.1', 300)).toBe('');
    await new Promise((resolve) => setTimeout(resolve, 50));
    expect(queue.status()).toMatchObject({ refusing: true, surges: 1, refused: 0 });
    const replies = await Promise.all(Array.from({ length: 10 }, (_, i) => dial(port, `127.65.${i}.1`)));
    expect(replies).toEqual(Array(10).fill(REFUSAL));
    expect(await dial(port, '127.10.1.7')).toBe('220 hi');
    expect(arrivals).toEqual([{ queue: 'known', from: '127.10.1.7' }]);
    // A steering from the daemon before it took the surge in leaves the guard's program in force.
    queue.steer(steer(['127.10.1.0/24'], { surgeAt: 8 }));
    expect(await dial(port, '127.66.0.1')).toBe(REFUSAL);
    expect(queue.takeSurge()).toEqual({ waiting: 8 });
    expect(queue.takeSurge()).toBeNull();
    // Taken in: the next steering is the daemon's again (here, no longer refusing; the guard armed again).
    queue.steer(steer(['127.10.1.0/24'], { surgeAt: 100 }));
    expect(await dial(port, '127.67.0.1', '127.0.0.1', 300)).toBe('');
    expect(queue.status()).toMatchObject({ refusing: false, surges: 1, refused: 11 });
  });

  it('arms no guard when a known network does not fit, and disarms one when a steering comes without surgeAt (refusing at connect off, or overload already)', async () => {
    const { queue, port } = await open('127.0.0.1', [], false);
    const many = Array.from({ length: 3000 }, (_, i) => `10.${i >> 8}.${i & 255}.0/24`);
    queue.steer(steer(many, { surgeAt: 3 }));
    await Promise.all(Array.from({ length: 6 }, (_, i) => dial(port, `127.64.${i}.1`, '127.0.0.1', 200)));
    await new Promise((resolve) => setTimeout(resolve, 50));
    expect(queue.status()).toMatchObject({ refusing: false, surges: 0 });
    // Armed, then a steering without surgeAt (the daemon's under overload.refuse: rcpt): it never fires.
    const other = await open('127.0.0.1', [], false);
    other.queue.steer(steer([], { surgeAt: 8 }));
    other.queue.steer(steer([]));
    await Promise.all(Array.from({ length: 10 }, (_, i) => dial(other.port, `127.65.${i}.1`, '127.0.0.1', 200)));
    await new Promise((resolve) => setTimeout(resolve, 50));
    expect(other.queue.status()).toMatchObject({ refusing: false, surges: 0, refused: 0 });
  });

  it('fires a guard past what the general queue can hold once it is full (the listener\'s backlog)', async () => {
    const { queue, generalFd } = await KnownQueue.open(addon, { address: '127.0.0.1', port: 0, backlog: 4 }, steer([], { surgeAt: 1000 }), () => undefined);
    closers.push(() => queue.close());
    closers.push(() => closeSync(generalFd));
    const port = (queue.server.address() as { port: number }).port;
    await Promise.all(Array.from({ length: 5 }, (_, i) => dial(port, `127.64.${i}.1`, '127.0.0.1', 200)));
    await new Promise((resolve) => setTimeout(resolve, 50));
    expect(queue.status()).toMatchObject({ refusing: true, surges: 1 });
    expect(await dial(port, '127.65.0.1')).toBe(REFUSAL);
  });

  it('does not refuse anyone at the socket when a known network does not fit in the program', async () => {
    const { queue, port } = await open('127.0.0.1', []);
    const many = Array.from({ length: 3000 }, (_, i) => `10.${i >> 8}.${i & 255}.0/24`);
    queue.steer(steer([...many, '127.10.1.0/24'], { refuseOthers: true }));
    expect(queue.status()).toMatchObject({ refusing: false, left: expect.any(Number) });
    expect(queue.status().left).toBeGreaterThan(0);
    expect(await dial(port, '127.10.1.7')).toBe('220 hi');
    expect(await dial(port, '127.64.0.1')).toBe('220 hi');
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
    await expect(KnownQueue.open(addon, { address: '127.0.0.1', port, backlog: 8 }, steer([]), () => undefined)).rejects.toMatchObject({ code: 'EADDRINUSE' });
    const mine = await open('127.0.0.1', []);
    await expect(KnownQueue.open(addon, { address: '127.0.0.1', port: mine.port, backlog: 8 }, steer([]), () => undefined)).rejects.toMatchObject({ code: 'EADDRINUSE' });
  });

  it('keeps the program in force when the kernel refuses a new one, and says why', async () => {
    const { queue, arrivals, port } = await open('127.0.0.1', ['127.10.1.0/24']);
    const bad = Buffer.alloc(8); // one instruction, opcode 0 (ld #0) and no return: the kernel's checker refuses it
    expect(() => addon.steer((queue as unknown as { fd: number }).fd, bad)).toThrow(/SO_ATTACH_REUSEPORT_CBPF.*EINVAL/);
    await dial(port, '127.10.1.9');
    expect(arrivals).toEqual([{ queue: 'known', from: '127.10.1.9' }]);
    expect(() => addon.listenShared('not an address', 0, 8, 2)).toThrow(/IPv4 or IPv6/);
  });

  it('out of descriptors, the refusing thread leaves the connections queued without spinning, and answers them once it has some again', async () => {
    // A process of its own with few descriptors, all taken once its sockets are open.
    const built = join(import.meta.dirname, '..', '..', 'dist', 'mta', 'ingress', 'ingress-known-queue.js');
    const script = `
      const fs = require('node:fs');
      import(${JSON.stringify(built)}).then(async ({ loadReuseport, KnownQueue }) => {
        const { queue } = await KnownQueue.open(loadReuseport(), { address: '127.0.0.1', port: 0, backlog: 64 }, { networks: [], blocked: [], refuseOthers: true, surgeAt: null, refusal: ${JSON.stringify(REFUSAL)} }, () => {});
        const held = [];
        try { for (;;) held.push(fs.openSync('/dev/null', 'r')); } catch {}
        process.stdout.write(String(queue.server.address().port) + '\\n');
        process.stdin.once('data', () => { for (const fd of held) fs.closeSync(fd); });
      });`;
    const child = spawn('prlimit', ['--nofile=128', '--', process.execPath, '-e', script], { stdio: ['pipe', 'pipe', 'inherit'] });
    closers.push(() => child.kill('SIGKILL'));
    const port = Number(await new Promise<string>((resolve) => child.stdout!.once('data', (d) => resolve(String(d).trim()))));
    const waiting = Array.from({ length: 5 }, (_, i) => dial(port, `127.70.${i}.1`, '127.0.0.1', 8000));
    await new Promise((r) => setTimeout(r, 300));
    const cpu = () => readFileSync(`/proc/${child.pid}/stat`, 'utf8').split(') ')[1].split(' ').slice(11, 13).reduce((a, b) => a + Number(b), 0);
    const before = cpu();
    await new Promise((r) => setTimeout(r, 1000));
    // Clock ticks (100 a second): a thread spinning on accept would use about 100 of them here.
    expect(cpu() - before).toBeLessThan(30);
    child.stdin!.write('go\n');
    expect(await Promise.all(waiting)).toEqual(Array(5).fill(REFUSAL));
  });
});
