// The outcomes of an attempt are kept before its notices' files go: a failed outcome commit and a
// notice file that cannot be removed (both injected, no tmpfs needed) must not make a delivered
// message go again.
import { afterEach, describe, expect, it } from 'vitest';
import type { SpoolWriter } from '../queue/queue-spool.js';
import { baseConfig, startApp, waitUntil, type TestApp } from './helpers/app.js';
import { RawSmtp } from './helpers/raw-smtp.js';
import { startSink, type Sink } from './helpers/sink.js';

describe('an outcome commit that fails, and a notice file that cannot be removed', () => {
  let t: TestApp | null = null;
  let sink: Sink | null = null;
  afterEach(async () => {
    await t?.stop();
    await sink?.close();
    t = null; sink = null;
  });

  it('sends a delivered message once', async () => {
    sink = await startSink({ host: '127.0.0.2', rcpt: (address) => (address.startsWith('bad@') ? { code: 550, text: '5.1.1 no such user' } : undefined) });
    const port = sink.port;
    t = await startApp((dir) => baseConfig(dir, {
      trustedNetworks: ['127.0.0.1/32'],
      queue: { retryInitial: '200ms', retryMax: '200ms', retryJitter: 0 },
      routes: { 'far.test': { host: '127.0.0.2', port } },
    }));
    const { queue } = t.app;
    const createWriter = queue.spool.createWriter.bind(queue.spool);
    queue.spool.createWriter = async (id: string, room?: (bytes: number) => boolean): Promise<SpoolWriter> => {
      const w = await createWriter(id, room);
      const discard = w.discard.bind(w);
      w.discard = async () => { await discard(); throw Object.assign(new Error('injected: cannot remove'), { code: 'EIO' }); };
      return w;
    };
    const write = queue.store.write.bind(queue.store);
    let failed = 0;
    queue.store.write = (unit, opts) => {
      if (unit[0]?.op === 'updateRecipients' && failed++ === 0) return Promise.reject(Object.assign(new Error('injected: database or disk is full'), { code: 'SQLITE_FULL' }));
      return write(unit, opts);
    };
    const c = await RawSmtp.atData(t.port(), 'me@sender.test', ['ok@far.test', 'bad@far.test']);
    await c.finishData('Subject: once\r\n\r\nbody\r\n');
    c.close();
    await sink.waitFor(1, 10_000);
    // Several retry cycles, and the first retry of the commit (after 1 s).
    await new Promise((r) => setTimeout(r, 2500));
    expect(failed).toBeGreaterThanOrEqual(1);
    expect(sink.messages.filter((m) => m.rcptTo.includes('ok@far.test'))).toHaveLength(1);
    expect(sink.rcptAttempts.get('ok@far.test')).toBe(1);
    expect(sink.rcptAttempts.get('bad@far.test')).toBe(1);
    await waitUntil(() => t!.logs.some((l) => l.msg === 'delivery outcomes recorded after a failed commit'), 10_000, 'the outcomes to be recorded');
    expect(t.logs.some((l) => l.msg === 'could not remove an unrecorded delivery status notice')).toBe(true);
  }, 30_000);
});
