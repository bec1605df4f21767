/*
 * Starting Ichidan in-process for a scenario: a temporary data folder, listeners on free ports,
 * logs kept in memory for the test to read. This is the scenarios' way in to the daemon: the config
 * input type, the config parser, the admin socket's path and the admin API client come from here too.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import type { OriginalDstReader } from '../../mta/proxy/proxy-origdst.js';
import { Ichidan, parseConfig } from '../../mta/index.js';
import type { ConfigInput } from '../../mta/mta-config-schema.js';
import { createLogger } from '../../mta/mta-log.js';
import type { DnsInputs } from '../../mta/mta-daemon.js';

export type { ConfigInput };
export { adminSocket, parseConfig } from '../../mta/index.js';
export { adminRequest } from '../../mta/admin/admin-client.js';
export { createLogger };

export interface TestApp {
  app: Ichidan;
  dataDir: string;
  logs: Array<Record<string, unknown>>;
  port(name?: string): number;
  stop(): Promise<void>;
}

export const TEST_PASSWORD = 'correct horse';
/** bcrypt of TEST_PASSWORD. */
export const TEST_HASH = '$2b$10$TEDCb/Iks/50BtWEkXbvJ.RjnH8OjvAEP5opDiqXfo1cmxivF9mz2';

export function baseConfig(dataDir: string, extra: Partial<ConfigInput> = {}): ConfigInput {
  return {
    hostname: 'mx.ichidan.test',
    dataDir,
    log: { level: 'info' },
    listeners: [
      { name: 'mx', role: 'mx', port: 0 },
      { name: 'submission', role: 'submission', port: 0 },
    ],
    queue: { retryInitial: '200ms', retryMax: '1s', retryJitter: 0 },
    ...extra,
  };
}

export async function startApp(build: (dataDir: string) => ConfigInput, opts: { dataDir?: string; originalDst?: OriginalDstReader; dns?: DnsInputs } = {}): Promise<TestApp> {
  const dataDir = opts.dataDir ?? await mkdtemp(join(tmpdir(), 'ichidan-test-'));
  const logs: Array<Record<string, unknown>> = [];
  const sinkStream = new Writable({
    write(chunk, _enc, cb) {
      for (const line of String(chunk).split('\n')) if (line) logs.push(JSON.parse(line));
      cb();
    },
  });
  const config = parseConfig(build(dataDir), 'test');
  const app = await Ichidan.start(config, createLogger(config.log.level, sinkStream), { originalDst: opts.originalDst, dns: opts.dns });
  return {
    app, dataDir, logs,
    port: (name = 'mx') => app.listener(name).port,
    async stop() {
      await app.stop();
      if (!opts.dataDir) await rm(dataDir, { recursive: true, force: true });
    },
  };
}

export async function waitUntil(check: () => boolean | Promise<boolean>, timeoutMs = 20_000, what = 'condition'): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

/** baseConfig with one tenant, demo, whose domain example.test is routed to `sink` (on 127.0.0.2). */
export function demoConfig(sink: { port: number }, extra: Partial<ConfigInput> = {}): (dataDir: string) => ConfigInput {
  return (dir) => baseConfig(dir, {
    tenants: { demo: { domains: ['example.test'] } },
    routes: { 'example.test': { host: '127.0.0.2', port: sink.port } },
    ...extra,
  });
}
