// Engines that hang or answer garbage beside a real clamd: both breakers open, no transaction is
// held past the engine deadline, and later scans skip them at once.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { baseConfig, startApp, waitUntil, type TestApp } from './helpers/app.js';
import { realDaemon } from './helpers/daemons.js';
import { startFakeServer, type FakeServer } from './helpers/engine-contract.js';
import { scans, sleep, summary, waitDelivered } from './helpers/engine-traffic.js';
import { fakeClamd } from './helpers/fake-clamd.js';
import { startLoad } from './helpers/load.js';
import { startSink, type Sink } from './helpers/sink.js';

const clamd = realDaemon('clamd');

describe.skipIf(!clamd)('fakes that hang or answer garbage (real daemons; skipped unless scripts/engines.sh start has run)', () => {
  let sink: Sink;
  let hang: FakeServer;
  let garbage: FakeServer;
  let t: TestApp;

  beforeAll(async () => {
    sink = await startSink({ host: '127.0.0.2' });
    hang = await startFakeServer(fakeClamd);
    hang.behaviour = 'hang';
    garbage = await startFakeServer(fakeClamd);
    garbage.behaviour = 'garbage';
  });
  afterAll(async () => {
    await t?.stop();
    await Promise.all([sink?.close(), hang?.close(), garbage?.close()]);
  });

  it('both end up open; no transaction is held past the deadline', async () => {
    const breaker = { failures: 2, window: '30s', cooldown: '10m' };
    t = await startApp((dir) => baseConfig(dir, {
      tenants: { demo: { domains: ['example.test'] } },
      routes: { 'example.test': { host: '127.0.0.2', port: sink.port } },
      engines: [
        { name: 'clamav', type: 'clamd', servers: [{ host: clamd!.host, port: clamd!.port }] },
        { name: 'hangs', type: 'clamd', servers: [{ host: hang.host, port: hang.port }], timeout: '400ms', breaker },
        { name: 'garbage', type: 'clamd', servers: [{ host: garbage.host, port: garbage.port }], timeout: '400ms', breaker },
      ],
    }));
    const load = startLoad(t.port('mx'), { senders: 2 });
    await waitUntil(() => t.app.engines.list().filter((e) => e.breaker === 'open').length === 2, 10_000, 'both breakers to open');
    const openedAt = Date.now();
    await sleep(500);
    const sent = await load.stop();
    summary('hang + garbage', sent);
    expect(sent.filter((s) => s.code !== 250)).toEqual([]);
    expect(Math.max(...sent.map((s) => s.ms))).toBeLessThan(400 + 600);
    const byName = Object.fromEntries(t.app.engines.list().map((e) => [e.name, e]));
    expect(byName.hangs).toMatchObject({ breaker: 'open' });
    expect(byName.hangs.lastError).toMatch(/^timeout/);
    expect(byName.garbage).toMatchObject({ breaker: 'open' });
    expect(byName.garbage.lastError).toMatch(/^protocol/);
    expect(byName.clamav).toMatchObject({ breaker: 'closed' });
    // Scans that started once both were open skip them at once (recorded as disabled): no message waits for them.
    const after = scans(t.dataDir).filter((r) => r.at - r.ms > openedAt);
    expect(after.length).toBeGreaterThan(0);
    for (const r of after) {
      for (const name of ['hangs', 'garbage']) expect(r.parsed.find((p) => p.engine === name)).toMatchObject({ status: 'skipped', skipped: 'disabled' });
    }
    await waitDelivered(sent, sink);
  });
});
