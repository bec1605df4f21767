// MTA-STS through a running Ichidan: enforce defers with 4.7.5 and sends nothing, testing delivers
// and warns (helpers/tls-policy-world.ts).
import nodemailer from 'nodemailer';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startApp, waitUntil } from './helpers/app.js';
import type { TestDns } from './helpers/dns-server.js';
import type { PolicyServer } from './helpers/policy-server.js';
import type { Sink } from './helpers/sink.js';
import { startTlsWorld, type TlsWorld } from './helpers/tls-policy-world.js';

describe('outbound TLS policy through a running Ichidan', () => {
  let w: TlsWorld;
  let PORT: number;
  let caFile: string;
  let dns: TestDns;
  let policies: PolicyServer;
  let wrongName: Sink;
  let testingBox: Sink;

  beforeAll(async () => {
    w = await startTlsWorld();
    ({ PORT, caFile, dns, policies, wrongName, testingBox } = w);
  });
  afterAll(async () => { await w?.close(); });

  it('through a running Ichidan: enforce defers with 4.7.5 and sends nothing, testing delivers and warns', async () => {
    const t = await startApp((dataDir) => ({
      hostname: 'mx.ichidan.test', dataDir, log: { level: 'info' },
      listeners: [{ name: 'mx', role: 'mx', port: 0 }], trustedNetworks: ['127.0.0.1/32'],
      dns: { servers: [dns.server], timeout: '1s' },
      queue: { retryInitial: '1h', retryJitter: 0 },
      delivery: { mxPort: PORT, connectTimeout: '2s', tls: { caFile }, mtaSts: { policyPort: policies.port } },
    }));
    try {
      const wrongBefore = wrongName.messages.length;
      const testingBefore = testingBox.messages.length;
      const tx = nodemailer.createTransport({ host: '127.0.0.1', port: t.port('mx'), ignoreTLS: true });
      await tx.sendMail({ from: 'me@sender.test', to: 'z@wrong.test', text: 'enforced' });
      await tx.sendMail({ from: 'me@sender.test', to: 'z@testing.test', text: 'testing' });
      tx.close();
      await waitUntil(() => t.logs.filter((l) => l.msg === 'delivery attempt').length >= 2, 10_000, 'both attempts');
      const attempts = Object.fromEntries(t.logs.filter((l) => l.msg === 'delivery attempt').map((l) => [l.rcpt, l]));
      expect(attempts['z@wrong.test']).toMatchObject({ verdict: 'deferred', status: '4.7.5' });
      expect(attempts['z@testing.test']).toMatchObject({ verdict: 'delivered' });
      expect(wrongName.messages.length).toBe(wrongBefore);
      expect(testingBox.messages.length).toBe(testingBefore + 1);
      expect(t.logs.some((l) => l.msg === 'MTA-STS testing policy would refuse this MX' && l.domain === 'testing.test')).toBe(true);
    } finally {
      await t.stop();
    }
  });
});
