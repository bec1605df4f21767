import { mkdtemp, readFile, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { ConfigError, loadConfig, parseConfig } from './mta-config.js';

function problems(input: unknown): string[] {
  try {
    parseConfig(input);
  } catch (err) {
    if (err instanceof ConfigError) return err.problems;
    throw err;
  }
  return [];
}

describe('configuration', () => {
  it('loads the embedded default, which needs nothing installed', () => {
    const c = loadConfig(join(import.meta.dirname, '..', 'config', 'default.yaml'));
    expect(c.listeners.map((l) => `${l.role}@${l.address}:${l.port}`)).toEqual(['mx@127.0.0.1:2525', 'submission@127.0.0.1:2587']);
    expect(c.dns.servers).toEqual([]);
    expect(c.tenants.demo.domains).toEqual(['example.test']);
    expect(c.routes['example.test']).toEqual({ hold: true });
    expect(c.queue.fsync).toBe(true);
    expect(Object.isFrozen(c.queue)).toBe(true);
  });

  it('loads the default with every engine, as scripts/engines.sh runs them', () => {
    const c = loadConfig(join(import.meta.dirname, '..', 'config', 'with-engines.yaml'));
    expect(c.engines.map((e) => `${e.name}:${e.type}`)).toEqual(['clamav:clamd', 'icap-av:icap', 'spamassassin:spamd', 'rspamd:rspamd', 'attachments:policy']);
    expect(c.engines[0]).toMatchObject({ timeout: 30_000, maxSize: 25 * 1024 * 1024, onError: 'skip', shadow: false });
    expect(c.scanning).toMatchObject({ virus: 'reject', quorum: { av: 1, spam: 0 }, recordRetention: 30 * 86_400_000 });
  });

  it('reads the egress settings: sites, source pools, tenant shares and caps, rates; names the key of each problem', () => {
    const c = parseConfig({
      tenants: { a: { egress: { weight: 2, concurrency: 30, messagesPerHour: 5000, sourcePool: 'out' } } },
      delivery: {
        site: { maxConnections: 10, messageRate: '600/m' },
        sites: { google: { mx: ['*.google.com'], maxConnections: 40, messageRate: '100/10s' } },
        sourcePools: { out: [{ address: '127.0.0.10', helo: 'out1.example.net' }, { address: '127.0.0.11' }] },
        throttle: { pause: '2m' },
      },
    });
    expect(c.delivery.site).toMatchObject({ maxConnections: 10, initialConnections: 5, messagesPerConnection: 100, idleTimeout: 5_000, slowReply: 30_000, messageRate: { count: 600, perMs: 60_000 } });
    expect(c.delivery.sites.google.messageRate).toEqual({ count: 100, perMs: 10_000 });
    expect(c.delivery.throttle).toMatchObject({ pause: 120_000, maxPause: 1_800_000, minSignals: 3, attributionShare: 0.6 });
    expect(c.tenants.a.egress).toMatchObject({ weight: 2, concurrency: 30, messagesPerHour: 5000, sourcePool: 'out', suspended: false });
    expect(problems({ tenants: { a: { egress: { sourcePool: 'nope' } } } })).toEqual(['tenants.a.egress.sourcePool: no source pool "nope" (delivery.sourcePools: none)']);
    expect(problems({ delivery: { site: { messageRate: 'lots' } } })[0]).toMatch(/^delivery\.site\.messageRate: a rate such as "600\/m"/);
    expect(problems({ delivery: { sites: { x: { maxConnections: 3 } } } })[0]).toMatch(/^delivery\.sites\.x: a site needs at least one `mx` or `domains` pattern/);
    expect(problems({ delivery: { sites: { x: { domains: ['x.test'], maxConnections: 3, initialConnections: 4 } } } })).toEqual(['delivery.sites.x.initialConnections: initialConnections (4) is above maxConnections (3)']);
    expect(problems({ delivery: { sourcePools: { out: [{ address: 'localhost' }] } } })[0]).toMatch(/^delivery\.sourcePools\.out\[0\]\.address: an IPv4 or IPv6 address/);
  });

  it('fills defaults and parses durations and sizes', () => {
    const c = parseConfig({ queue: { retryInitial: '90s', maxAge: '2d' }, limits: { maxMessageSize: '10MB' } });
    expect(c.queue.retryInitial).toBe(90_000);
    expect(c.queue.maxAge).toBe(2 * 86_400_000);
    expect(c.queue.retryMax).toBe(3_600_000);
    expect(c.limits.maxMessageSize).toBe(10 * 1024 * 1024);
    expect(c.limits.commandTimeout).toBe(300_000);
  });

  it.each([
    [{ listners: [] }, 'listners: unknown key'],
    [{ queue: { retryInitial: '5 minutes' } }, 'queue.retryInitial: a duration such as'],
    [{ queue: { concurrency: 'lots' } }, 'queue.concurrency:'],
    [{ listeners: [{ name: 'mx', role: 'relay', port: 25 }] }, 'listeners[0].role: must be one of "mx", "submission"'],
    [{ listeners: [{ name: 'mx', role: 'mx', port: 25, tls: 'yes' }] }, 'listeners[0].tls: must be one of "starttls", "implicit", "none"'],
    [{ dns: { servers: ['resolver.example'] } }, 'dns.servers[0]: a resolver address'],
    [{ trustedNetworks: ['10.0.0.0/33'] }, 'trustedNetworks[0]: an address or network'],
    [{ users: [{ name: 'u', password: 'plain', tenant: 't' }] }, 'users[0].password: a bcrypt hash'],
    [{ tenants: { a: { domains: ['x.test'] }, b: { domains: ['x.test'] } } }, 'tenants.b.domains[0]: domain "x.test" is already hosted by tenant "a"'],
    [{ tenants: { a: { domanis: [] } } }, 'tenants.a.domanis: unknown key'],
    [{ routes: { 'x.test': { host: '127.0.0.1', prot: 25 } } }, 'routes.x.test'],
    [{ tls: { cert: '/x.pem' } }, 'tls: tls.cert and tls.key go together'],
    [{ engines: [{ name: 'av', type: 'clamav' }] }, 'engines[0].type:'],
    [{ engines: [{ name: 'av', type: 'clamd', server: { host: '127.0.0.1' } }] }, 'engines[0].server: unknown key'],
    [{ engines: [{ name: 'av', type: 'clamd', timeout: 'soon' }] }, 'engines[0].timeout: a duration such as'],
    [{ engines: [{ name: 'av', type: 'clamd' }, { name: 'av', type: 'icap', server: { host: '127.0.0.1' }, service: 'avscan' }] }, 'engines[1].name: another engine is already named "av"'],
    [{ engines: [{ name: 'auth', type: 'mailauth' }] }, 'engines[0].type: sender authentication needs DNS: set dns.servers'],
    [{ engines: [{ name: 'sa', type: 'spamd', onError: 'panic' }] }, 'engines[0].onError: must be one of "skip", "tempfail"'],
    [{ scanning: { spam: { mode: 'most' } } }, 'scanning.spam.mode:'],
    [{ delivery: { tls: { caFile: '/nonexistent/ca.pem' } } }, 'delivery.tls.caFile: cannot read /nonexistent/ca.pem: ENOENT'],
    [{ scanning: { quorum: { av: -1 } } }, 'scanning.quorum.av:'],
    [{ tenants: { a: { scanning: { engines: ['ghost'] } } } }, 'tenants.a.scanning.engines[0]: no engine named "ghost" (engines: none)'],
    [{ admin: { port: 0 } }, 'admin.token: admin.port needs admin.token'],
    [{ limits: { client: { maxConnections: -1 } } }, 'limits.client.maxConnections:'],
    [{ auth: { workers: 0 } }, 'auth.workers:'],
  ])('refuses %j naming the key', (input, expected) => {
    const found = problems(input);
    expect(found.join('\n')).toContain(expected);
  });

  it('refuses a user of an unknown tenant', () => {
    expect(problems({ users: [{ name: 'u', password: '$2b$10$' + 'a'.repeat(53), tenant: 'nope' }] })).toEqual(['users[0].tenant: no tenant "nope" (tenants: none)']);
  });

  it('reports YAML syntax errors and unreadable files as config errors', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'ichidan-cfg-'));
    const bad = join(dir, 'bad.yaml');
    await writeFile(bad, 'listeners: [\n  - name: mx\n');
    expect(() => loadConfig(bad)).toThrow(ConfigError);
    const dup = join(dir, 'dup.yaml');
    await writeFile(dup, 'hostname: a.test\nhostname: b.test\n');
    expect(() => loadConfig(dup)).toThrow(/YAML syntax/);
    expect(() => loadConfig(join(dir, 'missing.yaml'))).toThrow(/cannot read the file/);
    expect(await readFile(bad, 'utf8')).toContain('listeners');
  });
});

describe('ichidan check-config', () => {
  it('exits 0 for a good file and 1 naming the key for a bad one', async () => {
    const { execFile } = await import('node:child_process');
    const { promisify } = await import('node:util');
    const run = promisify(execFile);
    const cli = join(import.meta.dirname, '..', 'dist', 'mta', 'mta-main.js');
    const good = await run(process.execPath, [cli, 'check-config', join(import.meta.dirname, '..', 'config', 'default.yaml')]);
    expect(good.stdout).toMatch(/: ok \(2 listeners, 1 tenants, 1 routes\)/);
    const dir = await mkdtemp(join(tmpdir(), 'ichidan-cli-'));
    const bad = join(dir, 'bad.yaml');
    await writeFile(bad, 'listeners:\n  - { name: mx, role: mx, port: 25, greetingDelay: soon }\nqueue: { maxAge: 3 days }\n');
    const err = await run(process.execPath, [cli, 'check-config', bad]).catch((e) => e);
    expect(err.code).toBe(1);
    expect(err.stderr).toContain('listeners[0].greetingDelay: a duration such as');
    expect(err.stderr).toContain('queue.maxAge: a duration such as');
    // `start` refuses the same file before binding anything.
    const start = await run(process.execPath, [cli, 'start', '-c', bad]).catch((e) => e);
    expect(start.code).toBe(1);
    expect(start.stderr).toContain('listeners[0].greetingDelay: a duration such as');
  });

  it("warns, exiting 0, when an engine's maxSize is below limits.maxMessageSize", async () => {
    const { execFile } = await import('node:child_process');
    const { promisify } = await import('node:util');
    const cli = join(import.meta.dirname, '..', 'dist', 'mta', 'mta-main.js');
    const file = join(await mkdtemp(join(tmpdir(), 'ichidan-cli-')), 'big.yaml');
    await writeFile(file, 'limits: { maxMessageSize: 50MB }\nengines:\n  - { name: attachments, type: policy }\n');
    const out = await promisify(execFile)(process.execPath, [cli, 'check-config', file]);
    expect(out.stdout).toMatch(/: ok /);
    expect(out.stderr).toContain('warning: engines[0].maxSize (26214400 bytes) is below limits.maxMessageSize (52428800 bytes)');
  });
});
