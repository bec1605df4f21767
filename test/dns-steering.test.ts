/*
 * The DNS responder inside a running Ichidan, on loopback: started when admission.dns.enabled,
 * steering by the measured pressure level and the known senders (a resolver paired with a pinned
 * client keeps the primary host under overload),
 * its answers in /metrics, stopped and started again by reloads; an MTA connecting on the pairing
 * address handed to a resolver pairs them, and without pairing addresses the timing does; a
 * pairing address or responder port that cannot be taken fails the start, naming the setting.
 * dig is the real client (test/helpers/dns-peers.ts: in CI a missing dig fails the run).
 */
import { connect } from 'node:net';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { Ichidan, parseConfig } from '../mta/index.js';
import type { ConfigInput } from '../mta/mta-config-schema.js';
import { createLogger } from '../mta/mta-log.js';
import type { DnsInputs } from '../mta/mta-daemon.js';
import { baseConfig, startApp, waitUntil, type TestApp } from './helpers/app.js';
import { dig, dnsPeersSupport } from './helpers/dns-peers.js';
import { redisSupport, startRedis } from './helpers/redis.js';

const support = dnsPeersSupport(['dig']);
const redisSupportForDns = redisSupport();
const PAIRING = ['127.0.0.41', '127.0.0.42'];

function dnsConfig(dns: Record<string, unknown>): (dir: string) => ConfigInput {
  return (dir) => baseConfig(dir, {
    listeners: [{ name: 'mx', role: 'mx', address: '127.0.0.1', port: 0 }],
    tenants: { demo: { domains: ['example.test'] } },
    admission: { dns: { enabled: true, address: '127.0.0.1', port: 0, primary: [{ name: 'mx1.example.test', address: '127.0.0.1' }], ...dns } },
  } as Partial<ConfigInput>);
}

function inputs(): DnsInputs & { pairs: Array<[string, string]> } {
  const pairs: Array<[string, string]> = [];
  return { pairs, level: () => 'normal', senders: { resolverStanding: () => 'unknown', pairResolver: (r, c) => { pairs.push([r, c]); } } };
}

/** An SMTP client from `from` to host:port, gone once greeted. */
function greeted(host: string, port: number, from: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = connect({ host, port, localAddress: from });
    s.once('data', (d) => { s.end('QUIT\r\n'); resolve(String(d)); });
    s.once('error', reject);
  });
}

let running: TestApp | null = null;
afterEach(async () => { await running?.stop(); running = null; });

describe.skipIf(!support.ok)(`DNS responder in the daemon${support.ok ? '' : ` (skipped: ${support.reason})`}`, () => {
  it('is started when enabled, counted in /metrics, stopped and started again by reloads', async () => {
    const dns = inputs();
    running = await startApp(dnsConfig({}), { dns });
    const { app } = running;
    const port = app.dns!.address.port;
    const mx = await dig('127.0.0.1', port, ['example.test', 'MX']);
    expect(mx.answers).toEqual([['example.test.', '30', 'MX', '10 mx1.example.test.']]);
    expect(await app.metrics.metrics()).toContain('ichidan_dns_answers_total{mode="normal",mechanism="primary"} 1');
    const config = app.config;
    app.reconfigure(parseConfig(dnsConfig({ enabled: false })(running.dataDir), 'test'));
    await waitUntil(() => app.dns === null, 5_000, 'the responder to stop');
    await waitUntil(async () => (await dig('127.0.0.1', port, ['example.test', 'MX'])).status === '', 10_000, 'no answer');
    app.reconfigure(config);
    await waitUntil(() => app.dns !== null, 5_000, 'the responder to start');
    expect((await dig('127.0.0.1', app.dns!.address.port, ['example.test', 'MX'])).status).toBe('NOERROR');
  });

  it('follows the measured pressure: overloaded, an unknown resolver is sent to the overflow host', async () => {
    running = await startApp((dir) => {
      const built = dnsConfig({ overflow: [{ name: 'mxc.example.test', address: '127.0.0.30' }] })(dir);
      // Sessions at 0 of maxClients reach a threshold of 0: overload after rise; every other signal out of the way.
      const pressure = {
        interval: '100ms', rise: '300ms', sessions: { busy: 0, overload: 0 },
        eventLoopDelay: { busy: '10s', overload: '20s' }, diskFree: { busy: 0, overload: 0 }, memoryFree: { busy: 0, overload: 0 },
      };
      return { ...built, admission: { ...built.admission, pressure } } as ConfigInput;
    });
    const { app } = running;
    await waitUntil(() => app.pressure.level === 'overload', 5_000, 'overload');
    const answer = await dig('127.0.0.1', app.dns!.address.port, ['example.test', 'MX']);
    expect(answer.answers).toEqual([['example.test.', '30', 'MX', '10 mxc.example.test.']]);
    expect(await app.metrics.metrics()).toContain('ichidan_dns_answers_total{mode="high",mechanism="overflow"} 1');
  });

  it('learns by default from the known senders: a resolver paired with a pinned client keeps the primary host under overload', async () => {
    const overflow = { overflow: [{ name: 'mxc.example.test', address: '127.0.0.30' }] };
    const build = (overloaded: boolean) => (dir: string) => {
      const built = dnsConfig(overflow)(dir);
      // At a sessions threshold of 0 the node is overloaded after rise; every other signal out of the way.
      const pressure = {
        interval: '100ms', rise: '300ms', sessions: overloaded ? { busy: 0, overload: 0 } : { busy: 0.98, overload: 0.99 },
        eventLoopDelay: { busy: '10s', overload: '20s' }, diskFree: { busy: 0, overload: 0 }, memoryFree: { busy: 0, overload: 0 },
      };
      return { ...built, trustedNetworks: ['127.0.0.13/32'], admission: { ...built.admission, pressure } } as ConfigInput;
    };
    running = await startApp(build(false));
    const { app } = running;
    const port = () => app.dns!.address.port;
    expect((await dig('127.0.0.1', port(), ['-b', '127.0.0.12', 'example.test', 'MX'])).answers[0][3]).toBe('10 mx1.example.test.');
    await greeted('127.0.0.1', running.port('mx'), '127.0.0.13');
    await waitUntil(() => app.senders!.resolverStanding('127.0.0.12') === 'known', 5_000, 'the resolver known');
    app.reconfigure(parseConfig(build(true)(running.dataDir), 'test'));
    await waitUntil(() => app.pressure.level === 'overload', 5_000, 'overload');
    expect((await dig('127.0.0.1', port(), ['-b', '127.0.0.12', 'example.test', 'MX'])).answers[0][3]).toBe('10 mx1.example.test.');
    expect((await dig('127.0.0.1', port(), ['-b', '127.0.0.14', 'example.test', 'MX'])).answers[0][3]).toBe('10 mxc.example.test.');
  });

  it('pairs the resolver with the MTA that connects on the pairing address it was handed', async () => {
    const dns = inputs();
    running = await startApp(dnsConfig({ pairingAddresses: PAIRING }), { dns });
    const { app } = running;
    const answer = await dig('127.0.0.1', app.dns!.address.port, ['-b', '127.0.0.7', 'example.test', 'MX']);
    const handed = answer.additional.find((r) => r[0] === 'mx1.example.test.' && r[2] === 'A')?.[3];
    expect(PAIRING).toContain(handed);
    expect(await greeted(handed!, running.port('mx'), '127.0.0.8')).toMatch(/^220 /);
    await waitUntil(() => dns.pairs.length > 0, 5_000, 'a pairing');
    expect(dns.pairs).toEqual([['127.0.0.7', '127.0.0.8']]);
    // The other pairing address was handed to nobody: a connection on it pairs nobody.
    const other = PAIRING.find((a) => a !== handed)!;
    expect(await greeted(other, running.port('mx'), '127.0.0.9')).toMatch(/^220 /);
    expect(dns.pairs).toHaveLength(1);
    // The listener took its pairing addresses at start: a reload naming others hands out only those it took.
    app.reconfigure(parseConfig(dnsConfig({ pairingAddresses: ['127.0.0.43'] })(running.dataDir), 'test'));
    const after = await dig('127.0.0.1', app.dns!.address.port, ['-b', '127.0.0.11', 'mx1.example.test', 'A']);
    expect(PAIRING).toContain(after.answers[0]?.[3]);
    expect(running.logs.some((l) => l.setting === 'admission.dns.pairingAddresses')).toBe(true);
  });

  it('pairs by timing when there are no pairing addresses', async () => {
    const dns = inputs();
    running = await startApp(dnsConfig({}), { dns });
    await dig('127.0.0.1', running.app.dns!.address.port, ['-b', '127.0.0.9', 'example.test', 'MX']);
    await greeted('127.0.0.1', running.port('mx'), '127.0.0.10');
    await waitUntil(() => dns.pairs.length > 0, 5_000, 'a pairing');
    expect(dns.pairs).toEqual([['127.0.0.9', '127.0.0.10']]);
  });
});

describe('DNS responder settings that cannot be met', () => {
  async function start(dns: Record<string, unknown>): Promise<Ichidan> {
    const dir = await mkdtemp(join(tmpdir(), 'ichidan-test-'));
    try {
      const config = parseConfig(dnsConfig(dns)(dir), 'test');
      return await Ichidan.start(config, createLogger('silent'), { dns: inputs() });
    } finally {
      // A failed start leaves the queue it had opened behind; its folder may still be written to.
      await rm(dir, { recursive: true, force: true, maxRetries: 5, retryDelay: 100 }).catch(() => undefined);
    }
  }

  it('fails the start naming admission.dns.pairingAddresses when one is not this machine\'s', async () => {
    await expect(start({ pairingAddresses: ['192.0.2.99'] })).rejects.toThrow(/^admission\.dns\.pairingAddresses: listener mx cannot listen on 192\.0\.2\.99:/);
  });

  it('fails the start naming admission.dns when its port is taken', async () => {
    const dns = inputs();
    running = await startApp(dnsConfig({}), { dns });
    await expect(start({ port: running.app.dns!.address.port })).rejects.toThrow(/^admission\.dns: cannot listen on (TCP|UDP) 127\.0\.0\.1:/);
  });
});

describe.skipIf(!support.ok || !redisSupportForDns.ok)(`DNS responder in a cluster${support.ok && redisSupportForDns.ok ? '' : ' (skipped: dig or redis-server missing)'}`, () => {
  it('hands out the live nodes of the cluster, not the draining one, with no primary hosts configured', async () => {
    const redis = await startRedis();
    const apps: TestApp[] = [];
    try {
      for (const [node, address] of [['mx-a.example.test', '127.0.0.51'], ['mx-b.example.test', '127.0.0.52']] as const) {
        apps.push(await startApp((dir) => baseConfig(dir, {
          listeners: [{ name: 'mx', role: 'mx', address, port: 0 }],
          tenants: { demo: { domains: ['example.test'] } },
          cluster: { redis: redis.url, node, heartbeat: '200ms', leaseTtl: '1s' },
          admission: { dns: { enabled: node === 'mx-a.example.test', address: '127.0.0.1', port: 0 } },
        } as Partial<ConfigInput>)));
      }
      const port = apps[0].app.dns!.address.port;
      const hosts = async () => (await dig('127.0.0.1', port, ['example.test', 'MX'])).answers.map((a) => a[3].split(' ')[1]).sort();
      await waitUntil(async () => (await hosts()).length === 2, 10_000, 'both nodes in the MX answer');
      expect(await hosts()).toEqual(['mx-a.example.test.', 'mx-b.example.test.']);
      const a = await dig('127.0.0.1', port, ['mx-b.example.test', 'A']);
      expect(a.answers[0][3]).toBe('127.0.0.52');
      apps[1].app.draining = true;
      await waitUntil(async () => (await hosts()).join() === 'mx-a.example.test.', 10_000, 'the draining node left out');
    } finally {
      for (const t of apps) await t.stop();
      await redis.stop();
    }
  });
});
