import { createServer, connect, type Socket } from 'node:net';
import { describe, expect, it } from 'vitest';
import { MAX_HEADER, parseProxyHeader, readProxyHeader, type ProxyVersion } from './ingress-proxy-header.js';

const SIG = Buffer.from('0d0a0d0a000d0a515549540a', 'hex');

/** A v2 header: command (0 LOCAL, 1 PROXY), family/transport byte, address block, extra TLV bytes. */
function v2(command: number, famTransport: number, body: Buffer, versionNibble = 2): Buffer {
  const head = Buffer.from([(versionNibble << 4) | command, famTransport, 0, 0]);
  head.writeUInt16BE(body.length, 2);
  return Buffer.concat([SIG, head, body]);
}

function inet4(src: string, dst: string, sport: number, dport: number): Buffer {
  const b = Buffer.alloc(12);
  src.split('.').forEach((o, i) => { b[i] = Number(o); });
  dst.split('.').forEach((o, i) => { b[4 + i] = Number(o); });
  b.writeUInt16BE(sport, 8);
  b.writeUInt16BE(dport, 10);
  return b;
}

function inet6(groups: number[], sport: number): Buffer {
  const b = Buffer.alloc(36);
  groups.forEach((g, i) => b.writeUInt16BE(g, i * 2));
  groups.forEach((g, i) => b.writeUInt16BE(g, 16 + i * 2));
  b.writeUInt16BE(sport, 32);
  b.writeUInt16BE(25, 34);
  return b;
}

describe('parseProxyHeader', () => {
  const v1 = (s: string) => Buffer.from(s, 'latin1');
  const cases: Array<[string, Buffer, ProxyVersion, unknown]> = [
    ['v1 TCP4', v1('PROXY TCP4 192.0.2.7 127.0.0.1 40000 25\r\nEHLO'), 'any', { kind: 'header', version: 1, length: 41, source: { address: '192.0.2.7', port: 40000 } }],
    ['v1 TCP6', v1('PROXY TCP6 2001:DB8::7 ::1 40000 25\r\n'), 'v1', { kind: 'header', version: 1, length: 37, source: { address: '2001:db8::7', port: 40000 } }],
    ['v1 UNKNOWN (a health check)', v1('PROXY UNKNOWN\r\n'), 'any', { kind: 'header', version: 1, length: 15, source: null }],
    ['v1 in pieces', v1('PROXY TCP4 192.0.2.7'), 'any', { kind: 'more' }],
    ['v1 first bytes', v1('PRO'), 'any', { kind: 'more' }],
    ['v1 without CRLF past 107 bytes', v1(`PROXY TCP4 ${'1'.repeat(120)}`), 'any', { kind: 'bad', why: 'PROXY v1 line longer than 107 bytes' }],
    ['v1 line too long', v1(`PROXY TCP4 192.0.2.7 127.0.0.1 40000 25${' '.repeat(80)}\r\n`), 'any', { kind: 'bad', why: 'PROXY v1 line longer than 107 bytes' }],
    ['v1 address of the wrong family', v1('PROXY TCP4 2001:db8::1 127.0.0.1 1 25\r\n'), 'any', { kind: 'bad', why: 'PROXY v1 line: not TCP4 addresses' }],
    ['v1 a name, not an address', v1('PROXY TCP4 evil.example 127.0.0.1 1 25\r\n'), 'any', { kind: 'bad', why: 'PROXY v1 line: not TCP4 addresses' }],
    ['v1 CRLF injected in the address', v1('PROXY TCP4 1.2.3.4\r\n 127.0.0.1 1 25\r\n'), 'any', { kind: 'bad', why: 'PROXY v1 line: not "PROXY TCP4|TCP6 source destination sport dport"' }],
    ['v1 bad port', v1('PROXY TCP4 192.0.2.7 127.0.0.1 70000 25\r\n'), 'any', { kind: 'bad', why: 'PROXY v1 line: bad port' }],
    ['v1 unknown protocol', v1('PROXY UDP4 192.0.2.7 127.0.0.1 1 25\r\n'), 'any', { kind: 'bad', why: 'PROXY v1 line: unknown protocol "UDP4"' }],
    ['v1 where v2 is configured', v1('PROXY TCP4 192.0.2.7 127.0.0.1 1 25\r\n'), 'v2', { kind: 'bad', why: 'a PROXY v1 header where v2 is configured' }],
    ['plain SMTP instead of a header', v1('EHLO client.test\r\n'), 'any', { kind: 'bad', why: 'no PROXY protocol header' }],
    ['v2 TCP over IPv4', v2(1, 0x11, inet4('192.0.2.9', '127.0.0.1', 50000, 25)), 'any', { kind: 'header', version: 2, length: 28, source: { address: '192.0.2.9', port: 50000 } }],
    ['v2 with TLVs after the addresses', v2(1, 0x11, Buffer.concat([inet4('192.0.2.9', '127.0.0.1', 1, 25), Buffer.from([0x05, 0, 3, 1, 2, 3])])), 'v2', { kind: 'header', version: 2, length: 34, source: { address: '192.0.2.9', port: 1 } }],
    ['v2 TCP over IPv6', v2(1, 0x21, inet6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 9], 443)), 'any', { kind: 'header', version: 2, length: 52, source: { address: '2001:db8::9', port: 443 } }],
    ['v2 LOCAL (a health check)', v2(0, 0x00, Buffer.alloc(0)), 'any', { kind: 'header', version: 2, length: 16, source: null }],
    ['v2 half a signature', SIG.subarray(0, 7), 'any', { kind: 'more' }],
    ['v2 address block still coming', v2(1, 0x11, inet4('192.0.2.9', '127.0.0.1', 1, 25)).subarray(0, 20), 'any', { kind: 'more' }],
    ['v2 where v1 is configured', v2(1, 0x11, inet4('192.0.2.9', '127.0.0.1', 1, 25)), 'v1', { kind: 'bad', why: 'a PROXY v2 header where v1 is configured' }],
    ['v2 wrong version', v2(1, 0x11, inet4('192.0.2.9', '127.0.0.1', 1, 25), 3), 'any', { kind: 'bad', why: 'PROXY v2 header: version 3' }],
    ['v2 unknown command', v2(5, 0x11, inet4('192.0.2.9', '127.0.0.1', 1, 25)), 'any', { kind: 'bad', why: 'PROXY v2 header: unknown command 5' }],
    ['v2 datagram', v2(1, 0x12, inet4('192.0.2.9', '127.0.0.1', 1, 25)), 'any', { kind: 'bad', why: 'PROXY v2 header: not a stream (TCP) connection' }],
    ['v2 unix socket', v2(1, 0x31, Buffer.alloc(216)), 'any', { kind: 'bad', why: 'PROXY v2 header: address family 3 (only TCP over IPv4 or IPv6)' }],
    ['v2 address block too short', v2(1, 0x11, Buffer.alloc(4)), 'any', { kind: 'bad', why: 'PROXY v2 header: address block too short' }],
    ['v2 oversized', v2(1, 0x11, Buffer.alloc(MAX_HEADER)), 'any', { kind: 'bad', why: `PROXY v2 header of ${MAX_HEADER + 16} bytes (at most ${MAX_HEADER})` }],
  ];
  it.each(cases)('%s', (_name, data, version, expected) => {
    expect(parseProxyHeader(data, version)).toEqual(expected);
  });
});

describe('readProxyHeader', () => {
  async function pair(): Promise<{ server: Socket; client: Socket; close: () => void }> {
    return new Promise((resolve) => {
      const srv = createServer((server) => {
        resolve({ server, client, close: () => { client.destroy(); server.destroy(); srv.close(); } });
      });
      let client: Socket;
      srv.listen(0, '127.0.0.1', () => {
        client = connect((srv.address() as { port: number }).port, '127.0.0.1');
        client.on('error', () => undefined);
      });
    });
  }

  it('reads a header sent byte by byte and leaves what follows it on the socket', async () => {
    const { server, client, close } = await pair();
    const bytes = Buffer.from('PROXY TCP4 192.0.2.7 127.0.0.1 40000 25\r\nEHLO x\r\n');
    const reading = readProxyHeader(server, 'any', 2000);
    for (const b of bytes) {
      client.write(Buffer.from([b]));
      await new Promise((r) => setImmediate(r));
    }
    const outcome = await reading;
    expect(outcome).toMatchObject({ ok: true, header: { source: { address: '192.0.2.7', port: 40000 } } });
    const rest = await new Promise<string>((resolve) => {
      let got = '';
      server.on('data', (d) => { got += d; if (got.endsWith('\r\n')) resolve(got); });
    });
    expect(rest).toBe('EHLO x\r\n');
    close();
  });

  it('gives up after the timeout when the peer sends nothing', async () => {
    const { server, close } = await pair();
    const started = Date.now();
    expect(await readProxyHeader(server, 'any', 200)).toEqual({ ok: false, why: 'no whole PROXY header within 200 ms' });
    expect(Date.now() - started).toBeGreaterThanOrEqual(190);
    close();
  });

  it('reports a peer that closes half way', async () => {
    const { server, client, close } = await pair();
    const reading = readProxyHeader(server, 'any', 2000);
    client.end('PROXY TCP4 192.0.2.7');
    expect(await reading).toEqual({ ok: false, why: 'the connection closed before its PROXY header was complete' });
    close();
  });

  it('tells a peer that leaves without a byte (a health check) from one that breaks off', async () => {
    const { server, client, close } = await pair();
    const reading = readProxyHeader(server, 'any', 2000);
    client.end();
    expect(await reading).toEqual({ ok: false, why: 'the connection closed before sending anything', empty: true });
    close();
  });

  it('refuses garbage at once, without waiting for the timeout', async () => {
    const { server, client, close } = await pair();
    const reading = readProxyHeader(server, 'any', 5000);
    client.write(Buffer.alloc(64, 0xff));
    expect(await reading).toEqual({ ok: false, why: 'no PROXY protocol header' });
    close();
  });
});
