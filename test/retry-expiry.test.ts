// Expiry: a message deferred past queue.maxAge is given up and bounced with the last reply.
import nodemailer from 'nodemailer';
import { describe, expect, it } from 'vitest';
import { baseConfig, startApp } from './helpers/app.js';
import { scripted } from './helpers/scripted-rcpt.js';
import { startSink } from './helpers/sink.js';

describe('expiry', () => {
  it('gives up after queue.maxAge and bounces with the last reply', async () => {
    const remote = await startSink({ host: '127.0.0.3', rcpt: scripted });
    const senderBox = await startSink({ host: '127.0.0.2' });
    const t = await startApp((dir) => baseConfig(dir, {
      trustedNetworks: ['127.0.0.1/32'],
      queue: { retryInitial: '100ms', retryMax: '200ms', retryJitter: 0, maxAge: '1s' },
      routes: { 'sender.test': { host: '127.0.0.2', port: senderBox.port }, 'remote.test': { host: '127.0.0.3', port: remote.port } },
    }));
    try {
      await nodemailer.createTransport({ host: '127.0.0.1', port: t.port('mx'), ignoreTLS: true })
        .sendMail({ from: 'me@sender.test', to: 'always-soft-x@remote.test', text: 'never arrives' });
      const [dsn] = await senderBox.waitFor(1, 10_000);
      const text = dsn.data.toString();
      expect(text).toMatch(/Action: failed\r\nStatus: 4\.3\.2\r\n/);
      expect(text).toMatch(/gave up: in the queue longer than queue\.maxAge/);
      expect(remote.rcptAttempts.get('always-soft-x@remote.test')).toBeGreaterThanOrEqual(3);
    } finally {
      await t.stop();
      await remote.close();
      await senderBox.close();
    }
  });
});
