// Hot swap by reload under continuous traffic: rspamd removed and a second clamd added, then the
// thresholds changed, with no transaction failing and each message scanned by its own snapshot's engines.
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { stringify } from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { baseConfig, startApp, waitUntil, type ConfigInput, type TestApp } from './helpers/app.js';
import { realDaemon } from './helpers/daemons.js';
import { engineEvents as events, scans, sleep, summary, waitDelivered } from './helpers/engine-traffic.js';
import { startLoad } from './helpers/load.js';
import { startPrivateClamd, type PrivateClamd } from './helpers/private-clamd.js';
import { startSink, type Sink } from './helpers/sink.js';

const clamd = realDaemon('clamd');
const rspamd = realDaemon('rspamd');

describe.skipIf(!clamd || !rspamd)('hot swap by reload under continuous traffic (real daemons; skipped unless scripts/engines.sh start has run)', () => {
  let sink: Sink;
  let second: PrivateClamd;
  let t: TestApp;
  let dataDir: string;

  beforeAll(async () => {
    sink = await startSink({ host: '127.0.0.2' });
    second = await startPrivateClamd();
    dataDir = await mkdtemp(join(tmpdir(), 'ichidan-test-'));
  });
  afterAll(async () => {
    await t?.stop();
    await Promise.all([sink?.close(), second?.stop()]);
    await rm(dataDir, { recursive: true, force: true });
  });

  it('removes rspamd and adds a second clamd, then changes thresholds: no transaction fails, each message scanned by its snapshot\'s engines', async () => {
    const base = (engines: ConfigInput['engines'], scanning: ConfigInput['scanning'] = {}) => baseConfig(dataDir, {
      tenants: { demo: { domains: ['example.test'] } },
      routes: { 'example.test': { host: '127.0.0.2', port: sink.port } },
      engines, scanning,
    });
    const gen1 = [
      { name: 'clamav', type: 'clamd' as const, servers: [{ host: clamd!.host, port: clamd!.port }] },
      { name: 'rspamd', type: 'rspamd' as const, url: `http://${rspamd!.host}:${rspamd!.port}` },
    ];
    const gen2 = [gen1[0], { name: 'clamav-2', type: 'clamd' as const, servers: [{ host: second.host, port: second.port }] }];
    const file = join(dataDir, 'ichidan.yaml');
    await writeFile(file, stringify(base(gen1)));
    t = await startApp(() => base(gen1), { dataDir });
    t.app.configFile = file;

    const load = startLoad(t.port('mx'), { senders: 4 });
    await sleep(1_500);
    await writeFile(file, stringify(base(gen2)));
    expect(t.app.reload()).toEqual({ ok: true, generation: 2, needsRestart: [] });
    await sleep(1_500);
    // A bad file changes nothing and names the key.
    await writeFile(file, stringify({ ...base(gen2), scanning: { spam: { tag: 'high' } } }));
    const bad = t.app.reload();
    expect(bad.ok).toBe(false);
    expect((bad as { problems: string[] }).problems.join('\n')).toContain('scanning.spam.tag');
    expect(t.app.generation).toBe(2);
    await writeFile(file, stringify(base(gen2, { spam: { tag: 0.3 } })));
    expect(t.app.reload()).toMatchObject({ ok: true, generation: 3 });
    await sleep(1_500);
    const sent = await load.stop();
    summary('hot swap', sent);

    expect(sent.filter((s) => s.code !== 250)).toEqual([]);
    await waitDelivered(sent, sink);
    await waitUntil(() => scans(dataDir).length >= sent.length, 10_000, 'every scan record');
    const rows = scans(dataDir);
    const expected: Record<number, string[]> = { 1: ['clamav', 'rspamd'], 2: ['clamav', 'clamav-2'], 3: ['clamav', 'clamav-2'] };
    for (const r of rows) expect(r.engines, `message ${r.queue_id} of generation ${r.generation}`).toEqual(expected[r.generation]);
    for (const r of rows) expect(r.parsed.every((p) => p.status === 'clean'), JSON.stringify(r.parsed)).toBe(true);
    const perGeneration = [1, 2, 3].map((g) => rows.filter((r) => r.generation === g).length);
    console.log('messages scanned per generation', perGeneration);
    for (const n of perGeneration) expect(n).toBeGreaterThan(0);
    // rspamd was drained and closed once no transaction held the first snapshot; clamav carried over.
    await waitUntil(() => events(dataDir).some((e) => e.engine === 'rspamd' && e.event === 'closed'), 5_000, 'rspamd closed');
    const log = events(dataDir).map((e) => `${e.engine} ${e.event}`);
    expect(log).toEqual(expect.arrayContaining(['clamav added', 'rspamd added', 'clamav-2 added', 'rspamd removed', 'rspamd closed']));
    expect(log).not.toContain('clamav replaced');
    expect(log).not.toContain('clamav closed');
  });
});
