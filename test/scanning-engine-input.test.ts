// What the engines read: a recording fake clamd receives the whole message, byte for byte, however
// many pieces DATA arrived in.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { demoConfig, startApp, type TestApp } from './helpers/app.js';
import { startFakeServer, type FakeServer } from './helpers/engine-contract.js';
import { RawSmtp } from './helpers/raw-smtp.js';
import { startSink, type Sink } from './helpers/sink.js';

describe('what the engines read', () => {
  let fake: FakeServer;
  let sink: Sink;
  let t: TestApp;
  const seen: Buffer[] = [];

  beforeAll(async () => {
    sink = await startSink({ host: '127.0.0.2' });
    // A clamd that records the bytes it was sent.
    fake = await startFakeServer((socket) => {
      let buf = Buffer.alloc(0);
      socket.on('data', (d: Buffer) => {
        buf = Buffer.concat([buf, d]);
        let at = buf.indexOf(0) + 1;
        if (at === 0) return;
        const parts: Buffer[] = [];
        while (buf.length >= at + 4) {
          const n = buf.readUInt32BE(at);
          if (buf.length < at + 4 + n) return;
          if (n === 0) {
            seen.push(Buffer.concat(parts));
            socket.end('stream: OK\0');
            return;
          }
          parts.push(buf.subarray(at + 4, at + 4 + n));
          at += 4 + n;
        }
      });
    });
    t = await startApp(demoConfig(sink, { engines: [{ name: 'recorder', type: 'clamd', servers: [{ host: fake.host, port: fake.port }] }] }));
  });
  afterAll(async () => {
    await t?.stop();
    await Promise.all([sink?.close(), fake?.close()]);
  });

  it.each([[3_000, 3], [50_000, 7], [300_000, 20]])('is the whole message of %i bytes when DATA arrives in %i pieces', async (size, pieces) => {
    const body = Array.from({ length: Math.ceil(size / 50) }, (_, i) => `line ${String(i).padStart(6, '0')} of a message sent in pieces..`).join('\r\n');
    const raw = `From: <alice@sender.test>\r\nTo: <bob@example.test>\r\nSubject: pieces\r\n\r\n${body}\r\n`;
    const smtp = await RawSmtp.atData(t.port('mx'), 'alice@sender.test', ['bob@example.test']);
    const bytes = Buffer.from(raw);
    const step = Math.ceil(bytes.length / pieces);
    for (let i = 0; i < bytes.length; i += step) {
      smtp.socket.write(bytes.subarray(i, i + step));
      await new Promise((r) => setTimeout(r, 5));
    }
    await smtp.finishData('');
    expect(seen.at(-1)?.length).toBe(bytes.length);
    expect(seen.at(-1)?.toString()).toBe(raw);
    smtp.socket.destroy();
  });
});
