/*
 * One Ichidan for scenarios about the SMTP ingress over raw sockets: an MX and a submission
 * listener, limits.maxMessageSize 64KB and maxRecipients 3, tenant alpha (alpha.test) with user
 * ann@alpha.test (TEST_PASSWORD), its mail delivered to a sink on 127.0.0.2.
 *
 * Gives: the TestApp, the sink, session() (a raw connection past its 220 greeting), stop().
 */
import { expect } from 'vitest';
import { baseConfig, startApp, TEST_HASH, type TestApp } from './app.js';
import { RawSmtp } from './raw-smtp.js';
import { startSink, type Sink } from './sink.js';

export interface Ingress {
  t: TestApp;
  mailbox: Sink;
  /** A raw connection to `listener` whose greeting was read (and checked). */
  session(listener?: string): Promise<RawSmtp>;
  stop(): Promise<void>;
}

export async function startIngress(): Promise<Ingress> {
  const mailbox = await startSink({ host: '127.0.0.2' });
  const t = await startApp((dir) => baseConfig(dir, {
    limits: { maxMessageSize: '64KB', maxRecipients: 3 },
    tenants: { alpha: { domains: ['alpha.test'] } },
    users: [{ name: 'ann@alpha.test', password: TEST_HASH, tenant: 'alpha' }],
    routes: { 'alpha.test': { host: '127.0.0.2', port: mailbox.port } },
  }));
  return {
    t, mailbox,
    async session(listener = 'mx') {
      const c = await RawSmtp.open(t.port(listener));
      expect((await c.reply())[0]).toMatch(/^220 mx\.ichidan\.test ESMTP/);
      return c;
    },
    async stop() {
      await t.stop();
      await mailbox.close();
    },
  };
}
