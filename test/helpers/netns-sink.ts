/*
 * A sink SMTP server as a process of its own, for tests that run it inside a network namespace
 * (test/proxy-netns.test.ts): the same recording server as test/helpers/sink.ts, reporting on
 * stdout instead of through an object the caller holds.
 *
 * Takes: argv `<host> <port> [replyDelayMs]` (the delay before the greeting and every MAIL, RCPT and
 * end-of-DATA reply); on stdin, the line `stats` asks for the connection statistics.
 * Gives: JSON lines on stdout: { event: 'listening', host, port } once bound; per message accepted
 * { event: 'message', mailFrom, rcptTo, clientAddress, connection, bytes }; { event: 'stats',
 * messages, connections, peakConnections (the most one client address held open at once) } when
 * asked and when ended by SIGTERM or SIGINT, after which it exits 0.
 */
import { createInterface } from 'node:readline';
import { startSink } from './sink.js';

function report(line: object): void {
  process.stdout.write(`${JSON.stringify(line)}\n`);
}

const [host, port, replyDelay] = process.argv.slice(2);
const sink = await startSink({ host, port: Number(port), replyDelay: replyDelay === undefined ? 0 : Number(replyDelay) });

const stats = (): void => report({ event: 'stats', messages: sink.messages.length, connections: sink.connections, peakConnections: sink.peakConnections });

// The sink keeps its messages in an array: one report per new entry, checked whenever the sink wakes a waiter.
let reported = 0;
const reportNew = (): void => {
  for (const m of sink.messages.slice(reported)) {
    report({ event: 'message', mailFrom: m.mailFrom, rcptTo: m.rcptTo, clientAddress: m.clientAddress, connection: m.connection, bytes: m.data.length });
  }
  reported = sink.messages.length;
};
const follow = async (): Promise<void> => {
  for (;;) {
    await sink.waitFor(reported + 1, 2 ** 31 - 1);
    reportNew();
  }
};
void follow();

createInterface({ input: process.stdin }).on('line', (line) => {
  if (line.trim() === 'stats') {
    reportNew();
    stats();
  }
});

for (const signal of ['SIGTERM', 'SIGINT'] as const) {
  process.once(signal, () => {
    reportNew();
    stats();
    void sink.close();
    process.exit(0);
  });
}

report({ event: 'listening', host, port: sink.port });
