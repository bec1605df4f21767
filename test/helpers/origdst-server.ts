/*
 * A TCP server that reports the original destination of every connection it accepts, run from
 * dist/ inside a test's network namespace (test/proxy-origdst.test.ts) so that the built loader and
 * addon answer about connections netfilter really redirected.
 *
 * Takes: argv pairs `<host> <port>` to listen on; `::` listens dual-stack, so its IPv4
 * connections arrive on IPv6 sockets with mapped addresses.
 * Gives: JSON lines on stdout: { event: 'listening' } once every listener is bound; per
 * connection { event: 'connection', remotePort, local: { address, port }, originalDst } or
 * { event: 'connection', remotePort, error } when the reader throws; { event: 'unavailable',
 * error } and exit 1 when the addon cannot load. Each connection is closed once reported.
 */
import { createServer } from 'node:net';
import { loadOriginalDst } from '../../mta/proxy/proxy-origdst.js';

function report(line: object): void {
  process.stdout.write(`${JSON.stringify(line)}\n`);
}

const reader = loadOriginalDst();
if (typeof reader !== 'function') {
  report({ event: 'unavailable', error: reader.error });
  process.exit(1);
}

const pairs = process.argv.slice(2);
let waiting = pairs.length / 2;
for (let i = 0; i < pairs.length; i += 2) {
  const server = createServer((socket) => {
    const common = { event: 'connection', remotePort: socket.remotePort, local: { address: socket.localAddress, port: socket.localPort } };
    try {
      report({ ...common, originalDst: reader(socket) });
    } catch (error) {
      report({ ...common, error: (error as Error).message });
    }
    socket.end();
  });
  server.listen({ host: pairs[i], port: Number(pairs[i + 1]) }, () => {
    waiting -= 1;
    if (waiting === 0) report({ event: 'listening' });
  });
}
