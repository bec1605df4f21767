// The config path rule (--config, ICHIDAN_CONFIG, /etc/ichidan/ichidan.yaml, the embedded default)
// and relative paths inside a file read against the file's folder: every path-valued key of the
// schema is in CONFIG_PATH_KEYS (found by walking the schema), and the built CLI, started from
// another folder, reads a file whose certificate, key, recipient list, DKIM key and data folder are
// all given relative to it.
import { execFile, spawn } from 'node:child_process';
import { generateKeyPairSync } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import type { z } from 'zod';
import { makeTestCa } from '../test/helpers/test-ca.js';
import { configSchema } from './mta-config-schema.js';
import { ABSOLUTE_PATH_KEYS, CONFIG_PATH_KEYS, configPath, embeddedConfig, resolveConfigPaths } from './mta-config-path.js';
import { loadConfig } from './mta-config.js';

const run = promisify(execFile);
const CLI = join(import.meta.dirname, '..', 'dist', 'mta', 'mta-main.js');

/** Key names that hold paths, wherever they are in the schema. */
const PATH_NAME = /^(cert|key|socket|file|dataDir)$|File$|Dir$/;

/** Every string-valued key of the schema whose name says it is a path, as "a.*.b" patterns. */
function pathKeys(schema: z.core.$ZodType, at: string[], out: Set<string>): void {
  const def = schema._zod.def as unknown as Record<string, unknown> & { type: string };
  const walk = (s: unknown, more: string[]) => pathKeys(s as z.core.$ZodType, [...at, ...more], out);
  switch (def.type) {
    case 'object':
      for (const [name, field] of Object.entries(def.shape as Record<string, unknown>)) walk(field, [name]);
      return;
    case 'optional': case 'nullable': case 'default': case 'prefault': case 'readonly': case 'catch': case 'nonoptional':
      return walk(def.innerType, []);
    case 'pipe':
      walk(def.in, []);
      return walk(def.out, []);
    case 'union':
      for (const option of def.options as unknown[]) walk(option, []);
      return;
    case 'array':
      return walk(def.element, ['*']);
    case 'record':
      return walk(def.valueType, ['*']);
    case 'string':
      if (PATH_NAME.test(at.at(-1) ?? '')) out.add(at.join('.'));
      return;
    default:
      return;
  }
}

describe('the config path rule', () => {
  it('takes --config, then ICHIDAN_CONFIG, then /etc/ichidan/ichidan.yaml when it exists, then the embedded default', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'ichidan-path-'));
    const system = join(dir, 'ichidan.yaml');
    expect(configPath('a.yaml', { ICHIDAN_CONFIG: '/x/b.yaml' }, system)).toBe(join(process.cwd(), 'a.yaml'));
    expect(configPath(undefined, { ICHIDAN_CONFIG: 'b.yaml' }, system)).toBe(join(process.cwd(), 'b.yaml'));
    expect(configPath(undefined, {}, system)).toBe(embeddedConfig());
    await writeFile(system, 'hostname: mx.example.com\n');
    expect(configPath(undefined, {}, system)).toBe(system);
    expect(configPath(undefined, { ICHIDAN_CONFIG: '/x/b.yaml' }, system)).toBe('/x/b.yaml');
    expect(embeddedConfig()).toBe(join(import.meta.dirname, '..', 'config', 'default.yaml'));
    // The embedded default's data folder is var/ at the top of the package, wherever the command runs.
    expect(loadConfig(embeddedConfig()).dataDir).toBe(join(import.meta.dirname, '..', 'var'));
  });

  it('lists every path-valued key of the schema', () => {
    const found = new Set<string>();
    pathKeys(configSchema, [], found);
    expect([...found].sort()).toEqual([...CONFIG_PATH_KEYS, ...ABSOLUTE_PATH_KEYS].sort());
  });

  it('makes relative paths relative to the file; absolute ones, Dovecot\'s socket and wrong types are left as they are', () => {
    const input = {
      log: { file: 'log/ichidan.log' },
      tls: { cert: 'tls/cert.pem', key: '/etc/ichidan/tls/key.pem', sni: { 'mx.example.com': { cert: 'sni.pem', key: 'sni.key' } } },
      listeners: [{ name: 'mx', cert: '../c.pem', key: 'k.pem' }],
      auth: { backend: { type: 'dovecot', socket: '127.0.0.1:12345' } },
      admin: { socket: 'run/admin.sock' },
      proxy: { eventsFile: 'events.jsonl' },
      delivery: { tls: { caFile: 'ca.pem' } },
      engines: [{ servers: [{ socket: 'clamd.sock' }, { host: '127.0.0.1', port: 3310 }] }],
      tenants: { a: { recipients: { file: 'rcpt.txt', domains: { 'a.test': { file: 'a.txt' } } }, dkim: [{ key: 'dkim.pem' }, { key: 42 }] } },
    };
    const out = resolveConfigPaths(input, '/srv/ichidan') as typeof input;
    expect(out).toMatchObject({
      dataDir: '/srv/ichidan/var',
      log: { file: '/srv/ichidan/log/ichidan.log' },
      tls: { cert: '/srv/ichidan/tls/cert.pem', key: '/etc/ichidan/tls/key.pem', sni: { 'mx.example.com': { cert: '/srv/ichidan/sni.pem', key: '/srv/ichidan/sni.key' } } },
      listeners: [{ cert: '/srv/c.pem', key: '/srv/ichidan/k.pem' }],
      auth: { backend: { socket: '127.0.0.1:12345' } },
      admin: { socket: '/srv/ichidan/run/admin.sock' },
      proxy: { eventsFile: '/srv/ichidan/events.jsonl' },
      delivery: { tls: { caFile: '/srv/ichidan/ca.pem' } },
      engines: [{ servers: [{ socket: '/srv/ichidan/clamd.sock' }, { host: '127.0.0.1' }] }],
      tenants: { a: { recipients: { file: '/srv/ichidan/rcpt.txt', domains: { 'a.test': { file: '/srv/ichidan/a.txt' } } }, dkim: [{ key: '/srv/ichidan/dkim.pem' }, { key: 42 }] } },
    });
    // The schema refuses a relative Dovecot socket (ingress-config.ts): it is left for it to name.
    expect(resolveConfigPaths({ dataDir: '/var/lib/ichidan', auth: { backend: { socket: 'auth-client' } } }, '/etc/ichidan'))
      .toEqual({ dataDir: '/var/lib/ichidan', auth: { backend: { socket: 'auth-client' } } });
  });

  it('reads a file whose paths are relative to it from another folder: check-config, then start with ICHIDAN_CONFIG', async () => {
    const root = await mkdtemp(join(tmpdir(), 'ichidan-relative-'));
    const etc = join(root, 'etc');
    const elsewhere = join(root, 'elsewhere');
    await mkdir(join(etc, 'tls'), { recursive: true });
    await mkdir(elsewhere);
    const ca = await makeTestCa();
    const leaf = await ca.issue(['mx.example.test']);
    await writeFile(join(etc, 'tls', 'cert.pem'), leaf.cert);
    await writeFile(join(etc, 'tls', 'key.pem'), leaf.key);
    await writeFile(join(etc, 'recipients.txt'), 'user@example.test\n');
    await writeFile(join(etc, 'dkim.pem'), generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ type: 'pkcs8', format: 'pem' }));
    const file = join(etc, 'ichidan.yaml');
    await writeFile(file, [
      'hostname: mx.example.test',
      'dataDir: data',
      'log: { file: log/ichidan.log }',
      'tls: { cert: tls/cert.pem, key: tls/key.pem }',
      'listeners:',
      '  - { name: mx, role: mx, address: 127.0.0.1, port: 0 }',
      'tenants:',
      '  t:',
      '    domains: [example.test]',
      '    recipients: { file: recipients.txt }',
      '    dkim: [{ domain: example.test, selector: s1, key: dkim.pem }]',
      '',
    ].join('\n'));
    const checked = await run(process.execPath, [CLI, 'check-config', 'ichidan.yaml'], { cwd: etc });
    expect(checked.stdout).toContain('ok (1 listeners, 1 tenants');
    const env = { ...process.env, ICHIDAN_CONFIG: file, ICHIDAN_READY_FD: '3' };
    const proc = spawn(process.execPath, [CLI, 'start'], { cwd: elsewhere, env, stdio: ['ignore', 'ignore', 'pipe', 'pipe'] });
    const exited = new Promise<number | null>((r) => proc.on('exit', r));
    let stderr = '';
    proc.stderr!.on('data', (d) => { stderr += d; });
    const ready = await new Promise<string>((resolve, reject) => {
      let text = '';
      proc.stdio[3]!.on('data', (d) => { text += d; if (text.includes('\n')) resolve(text); });
      exited.then((code) => reject(new Error(`exited ${code}: ${stderr}`)));
    });
    expect(JSON.parse(ready).ready).toBe(true);
    expect(existsSync(join(etc, 'data', 'queue.db'))).toBe(true);
    expect(existsSync(join(etc, 'data', 'admin.sock'))).toBe(true);
    expect(existsSync(join(etc, 'log', 'ichidan.log'))).toBe(true);
    expect(existsSync(join(elsewhere, 'data'))).toBe(false);
    // A command run from a third folder finds the same process through ICHIDAN_CONFIG.
    const status = await run(process.execPath, [CLI, 'queue'], { cwd: root, env: { ...process.env, ICHIDAN_CONFIG: file } });
    expect(status.stderr).toBe('');
    proc.kill('SIGTERM');
    expect(await exited).toBe(0);
  });
});
