// Recipients whose DSN NOTIFY differs (RFC 3461) go in separate transactions, and the session is
// reset after a refused one.
import { describe, expect, it } from 'vitest';
import { baseConfig, startApp, waitUntil } from './helpers/app.js';
import { RawSmtp } from './helpers/raw-smtp.js';
import { scripted } from './helpers/scripted-rcpt.js';
import { startSink } from './helpers/sink.js';

describe('DSN groups by NOTIFY', () => {
  it('sends recipients with different NOTIFY in separate transactions, resetting after a refused one', async () => {
    const remote = await startSink({ host: '127.0.0.3', rcpt: scripted });
    const t = await startApp((dir) => baseConfig(dir, {
      trustedNetworks: ['127.0.0.1/32'],
      routes: { 'remote.test': { host: '127.0.0.3', port: remote.port } },
    }));
    try {
      const c = await RawSmtp.atData(t.port('mx'), '', ['hard-x@remote.test NOTIFY=NEVER', 'fine@remote.test NOTIFY=FAILURE']);
      const qid = await c.finishData('Subject: two groups\r\n\r\nx\r\n');
      await c.command('QUIT');
      const [m] = await remote.waitFor(1);
      expect(m.rcptTo).toEqual(['fine@remote.test']);
      expect(m.rcptParams[0]).toMatchObject({ NOTIFY: 'FAILURE' });
      await waitUntil(() => t.logs.filter((l) => l.qid === qid && l.msg === 'delivery attempt').length === 2);
      const verdicts = Object.fromEntries(t.logs.filter((l) => l.qid === qid && l.msg === 'delivery attempt').map((l) => [l.rcpt, l.verdict]));
      expect(verdicts).toEqual({ 'hard-x@remote.test': 'bounced', 'fine@remote.test': 'delivered' });
    } finally {
      await t.stop();
      await remote.close();
    }
  });
});
