// Retry jitter: every deferred recipient of a lane gets a retry time of its own, spread by
// queue.retryJitter around queue.retryInitial, and is retried no earlier than that time. Without the
// jitter the three retry times would be the same.
import nodemailer from 'nodemailer';
import { describe, expect, it } from 'vitest';
import { baseConfig, startApp, waitUntil } from './helpers/app.js';
import { scripted } from './helpers/scripted-rcpt.js';
import { startSink } from './helpers/sink.js';

describe('retries with jitter', () => {
  it('retries every deferred recipient of a lane, each at its own jittered time', async () => {
    const remote = await startSink({ host: '127.0.0.3', rcpt: scripted });
    const t = await startApp((dir) => baseConfig(dir, {
      trustedNetworks: ['127.0.0.1/32'],
      queue: { retryInitial: '1s', retryMax: '2s', retryJitter: 0.5 },
      routes: { 'remote.test': { host: '127.0.0.3', port: remote.port } },
    }));
    try {
      const recipients = ['soft-1a@remote.test', 'soft-1b@remote.test', 'soft-1c@remote.test'];
      const info = await nodemailer.createTransport({ host: '127.0.0.1', port: t.port('mx'), ignoreTLS: true })
        .sendMail({ from: 'me@sender.test', to: recipients, text: 'jitter' });
      const qid = info.response.split(' ').pop()!;
      // After the first attempt each recipient is deferred until updated_at + its own retry delay.
      const deferred = () => t.app.queue.store.recipientsOf(qid).filter((r) => r.state === 'queued' && r.attempts === 1);
      await waitUntil(() => deferred().length === 3, 10_000, 'all three deferred once');
      const retryAt = new Map(deferred().map((r) => [r.address, r.next_attempt]));
      const delays = deferred().map((r) => r.next_attempt - r.updated_at);
      for (const d of delays) {
        expect(d).toBeGreaterThanOrEqual(500);
        expect(d).toBeLessThanOrEqual(1_500);
      }
      // Three independent draws: the same delay for all three would mean no jitter (odds about 1 in 10^6).
      expect(new Set(delays).size).toBeGreaterThan(1);
      await waitUntil(() => recipients.every((a) => remote.messages.some((m) => m.rcptTo.includes(a))), 10_000, 'all three after their retries');
      for (const address of recipients) {
        const arrived = remote.messages.find((m) => m.rcptTo.includes(address))!;
        expect(arrived.at, `${address} retried before its own time`).toBeGreaterThanOrEqual(retryAt.get(address)!);
      }
    } finally {
      await t.stop();
      await remote.close();
    }
  });
});
