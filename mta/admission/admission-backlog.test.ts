import { spawn } from 'node:child_process';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { describe, expect, it } from 'vitest';
import { acceptQueue, listeningQueues, readListening } from './admission-backlog.js';

const TABLE = `  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:09C5 00000000:0000 0A 00000000:00000007 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0
   1: 00000000:0019 00000000:0000 0A 00000000:00000002 00:00000000 00000000     0        0 2 1 0 100 0 0 10 0
   2: 0100007F:09C5 0100007F:D431 01 00000000:00000040 00:00000000 00000000     0        0 3 1 0 20 4 30 10 -1
`;

const TABLE6 = `  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:09C5 00000000000000000000000000000000:0000 0A 00000000:00000003 00:00000000 00000000     0        0 4 1 0 100 0 0 10 0
   1: B80D0120000000000000000001000000:09C5 00000000000000000000000000000000:0000 0A 00000000:00000005 00:00000000 00000000     0        0 5 1 0 100 0 0 10 0
   2: 00000000000000000000000000000000:0019 00000000000000000000000000000000:0000 0A 00000000:00000004 00:00000000 00000000     0        0 6 1 0 100 0 0 10 0
`;

describe('the accept queue', () => {
  it('tells IPv6 listeners apart by address, not by port alone, and adds wildcard sockets of both tables once', () => {
    const q = listeningQueues(TABLE6, true);
    expect([...q]).toEqual([['::1 2501', 3], ['2001:db8::1 2501', 5], [':: 25', 4]]);
    const read = (f: string) => (f.endsWith('6') ? TABLE6 : TABLE);
    expect(acceptQueue([{ address: '::1', port: 2501 }], read)).toBe(3);
    expect(acceptQueue([{ address: '2001:0db8:0:0::1', port: 2501 }], read)).toBe(5);
    expect(acceptQueue([{ address: '::2', port: 2501 }], read)).toBe(0);
    expect(acceptQueue([{ address: '::', port: 25 }], read)).toBe(6); // :: 4 and 0.0.0.0 2
    expect(acceptQueue([{ address: '::', port: 25 }, { address: '0.0.0.0', port: 25 }], read)).toBe(6);
    // A listener and its pairing addresses: every endpoint counts.
    expect(acceptQueue([{ address: '127.0.0.1', port: 2501 }, { address: '::1', port: 2501 }, { address: '2001:db8::1', port: 2501 }], read)).toBe(15);
  });

  it('reads listening sockets\' queues from the kernel\'s table, not established ones', () => {
    const q = listeningQueues(TABLE, false);
    expect(q.get('127.0.0.1 2501')).toBe(7);
    expect(q.get('0.0.0.0 25')).toBe(2);
    expect(q.size).toBe(2);
    const read = (f: string) => (f.endsWith('6') ? '' : TABLE);
    expect(acceptQueue([{ address: '127.0.0.1', port: 2501 }], read)).toBe(7);
    expect(acceptQueue([{ address: '0.0.0.0', port: 25 }], read)).toBe(2);
    expect(acceptQueue([{ address: '127.0.0.2', port: 2501 }], read)).toBe(0);
    expect(acceptQueue([{ address: '127.0.0.1', port: 2501 }], () => { throw new Error('no /proc'); })).toBeNull();
    // A table no endpoint can be in is not read.
    const tables: string[] = [];
    const noting = (f: string) => { tables.push(f); return f.endsWith('6') ? TABLE6 : TABLE; };
    expect(acceptQueue([{ address: '127.0.0.1', port: 2501 }], noting)).toBe(7);
    expect(tables).toEqual(['/proc/net/tcp']);
    tables.length = 0;
    expect(acceptQueue([{ address: '::1', port: 2501 }], noting)).toBe(3);
    expect(tables).toEqual(['/proc/net/tcp6']);
    tables.length = 0;
    expect(acceptQueue([{ address: '0.0.0.0', port: 25 }], noting)).toBe(6);
    expect(tables).toEqual(['/proc/net/tcp', '/proc/net/tcp6']);
    expect(acceptQueue([{ address: '::1', port: 2501 }], () => { throw new Error('no /proc'); })).toBeNull();
    // No listener under admission: nothing to read, nothing waits.
    expect(acceptQueue([], () => { throw new Error('read'); })).toBe(0);
  });

  it('reads the kernel\'s table only as far as its listening sockets, which come first', () => {
    const text = readListening('/proc/net/tcp');
    const states = text.split('\n').slice(1).map((l) => l.trim().split(/\s+/)[3]);
    expect(states.length).toBeGreaterThan(0);
    expect(states.every((s) => s === '0A')).toBe(true);
  });

  it('reads past its first page when the listening sockets fill more than one', async () => {
    // 40 listeners: about 6 KB of table lines, more than one read's page.
    const servers: Server[] = [];
    try {
      for (let i = 0; i < 40; i++) {
        const server = createServer();
        await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
        servers.push(server);
      }
      const listed = listeningQueues(readListening('/proc/net/tcp'), false);
      for (const server of servers) expect(listed.has(`127.0.0.1 ${(server.address() as { port: number }).port}`)).toBe(true);
    } finally {
      for (const server of servers) server.close();
    }
  });

  it('counts connections a real listener has not accepted yet', async () => {
    // A listener that never accepts (Node's always do): Python's, on a free loopback port.
    const py = spawn('python3', ['-c', 'import socket,sys,time\ns=socket.socket()\ns.bind(("127.0.0.1",0))\ns.listen(64)\nprint(s.getsockname()[1],flush=True)\ntime.sleep(30)'], { stdio: ['ignore', 'pipe', 'inherit'] });
    const sockets: Socket[] = [];
    try {
      const port = Number(await new Promise<string>((resolve) => py.stdout.once('data', (d) => resolve(String(d).trim()))));
      expect(acceptQueue([{ address: '127.0.0.1', port }])).toBe(0);
      for (let i = 0; i < 5; i++) {
        const s = connect({ host: '127.0.0.1', port });
        s.on('error', () => undefined);
        sockets.push(s);
        await new Promise((r) => s.once('connect', r));
      }
      expect(acceptQueue([{ address: '127.0.0.1', port }])).toBe(5);
    } finally {
      for (const s of sockets) s.destroy();
      py.kill();
    }
  });
});
