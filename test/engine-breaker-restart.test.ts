// A circuit breaker with a real clamd (the test's own) killed and restarted under traffic: it opens
// within N failures, mail keeps flowing under the tempfail policy with nothing lost, and it closes
// once clamd is back; the metrics say so.
import { request } from 'node:http';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { baseConfig, startApp, waitUntil, type TestApp } from './helpers/app.js';
import { engineEvents as events, lost, scans, sleep, summary, waitDelivered } from './helpers/engine-traffic.js';
import { startLoad } from './helpers/load.js';
import { startPrivateClamd, type PrivateClamd } from './helpers/private-clamd.js';
import { startSink, type Sink } from './helpers/sink.js';

describe('circuit breaker with a real clamd killed and restarted under traffic', () => {
  let sink: Sink;
  let av: PrivateClamd;
  let t: TestApp;

  beforeAll(async () => {
    sink = await startSink({ host: '127.0.0.2' });
    av = await startPrivateClamd();
  });
  afterAll(async () => {
    await t?.stop();
    await Promise.all([sink?.close(), av?.stop()]);
  });

  it('opens within N failures, keeps mail flowing under the tempfail policy with nothing lost, closes after clamd returns', async () => {
    const FAILURES = 3;
    t = await startApp((dir) => baseConfig(dir, {
      tenants: { demo: { domains: ['example.test'] } },
      routes: { 'example.test': { host: '127.0.0.2', port: sink.port } },
      engines: [{ name: 'clamav', type: 'clamd', servers: [{ host: av.host, port: av.port }], timeout: '2s', breaker: { failures: FAILURES, window: '10s', cooldown: '1s' } }],
      scanning: { belowQuorum: 'tempfail' },
    }));
    const load = startLoad(t.port('mx'), { senders: 4 });
    await sleep(1_000);
    const killedAt = Date.now();
    await av.kill();
    await waitUntil(() => t.app.engines.list()[0].breaker === 'open', 10_000, 'the breaker to open');
    const openedAt = Date.now();
    await sleep(1_500);
    const restartedAt = Date.now();
    await av.start();
    await waitUntil(() => t.app.engines.list()[0].breaker === 'closed', 10_000, 'the breaker to close');
    const closedAt = Date.now();
    await sleep(1_000);
    const sent = await load.stop();

    const lostOnes = (await waitDelivered(sent, sink).then(() => [], () => lost(sent, sink)));
    const tempfailed = sent.filter((s) => s.code === 451);
    summary('clamd SIGKILL', sent, { lost: lostOnes.length, timeToOpenMs: openedAt - killedAt, timeToCloseMs: closedAt - restartedAt });
    expect(lostOnes).toEqual([]);
    expect(sent.filter((s) => s.code !== 250 && s.code !== 451)).toEqual([]);
    expect(tempfailed.length).toBeGreaterThan(0);
    expect(tempfailed.every((s) => /^451 4\.7\.1 /.test(s.reply))).toBe(true);
    expect(sent.filter((s) => s.code === 250 && s.at > closedAt + 100).length).toBeGreaterThan(0);
    // No transaction waited much past the engine's deadline, the daemon dying mid-scan included.
    expect(Math.max(...sent.map((s) => s.ms))).toBeLessThan(2_000 + 1_500);
    // At most N failed scans decided the opening (plus the ones already in flight from the other senders).
    const rows = scans(t.dataDir);
    // Records are written just after each scan ends: count the failures recorded up to shortly after the
    // breaker's own transition time (the scans still in flight then are the other senders').
    const openEvent = events(t.dataDir).find((e) => e.event === 'breaker' && e.to_state === 'open')!;
    const failedBeforeOpen = rows.filter((r) => r.at <= openEvent.at + 100 && r.parsed[0]?.status === 'error').length;
    expect(failedBeforeOpen).toBeGreaterThanOrEqual(FAILURES);
    expect(failedBeforeOpen).toBeLessThanOrEqual(FAILURES + 4);
    expect(rows.filter((r) => r.parsed[0]?.skipped === 'disabled').length).toBeGreaterThan(0);
    const transitions = events(t.dataDir).filter((e) => e.event === 'breaker').map((e) => `${e.from_state}>${e.to_state}`);
    expect(transitions.slice(0, 1)).toEqual(['closed>open']);
    expect(transitions.at(-1)).toBe('half-open>closed');
    expect(openedAt - killedAt).toBeLessThan(5_000);
    expect(closedAt - restartedAt).toBeLessThan(1_000 + 2_000);
    const text = await new Promise<string>((resolve, reject) => {
      request({ socketPath: join(t.dataDir, 'admin.sock'), path: '/metrics' }, (res) => {
        let body = '';
        res.on('data', (d) => { body += d; });
        res.on('end', () => resolve(body));
      }).on('error', reject).end();
    });
    expect(text).toMatch(/ichidan_engine_events_total\{engine="clamav",event="breaker",to="open"\} [1-9]/);
    expect(text).toMatch(/ichidan_engine_up\{engine="clamav",breaker="closed",state="enabled"\} 1/);
  });
});
