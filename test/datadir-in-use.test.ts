// One data folder, one Ichidan (or one primary of workers): a second one started on it is refused (exit 1, a line naming the
// folder and the running process) and the first goes on; once that one is gone (even by SIGKILL,
// leaving its run marker behind) the folder can be started again.
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { spawn } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CLI, startChild, type ChildIchidan } from './helpers/child.js';
import { RawSmtp } from './helpers/raw-smtp.js';
import { startRedis, type TestRedis } from './helpers/redis.js';

async function greeting(port: number): Promise<string> {
  const c = await RawSmtp.open(port);
  const reply = (await c.reply()).join('\n');
  c.close();
  return reply;
}

describe('a data folder already in use', () => {
  let dataDir: string;
  let configFile: string;
  let first: ChildIchidan | null = null;
  beforeAll(async () => {
    dataDir = await mkdtemp(join(tmpdir(), 'ichidan-inuse-'));
    configFile = join(dataDir, 'config.yaml');
    await writeFile(configFile, [
      `dataDir: ${dataDir}`, 'hostname: inuse.ichidan.test', 'log: { level: warn }',
      'listeners: [{ name: mx, role: mx, port: 0 }]', '',
    ].join('\n'));
  });
  afterAll(async () => {
    first?.proc.kill('SIGKILL');
    await rm(dataDir, { recursive: true, force: true });
  });

  it('refuses a second Ichidan, keeps the first, and starts again once the first is gone', async () => {
    first = await startChild(configFile);
    expect(await greeting(first.ports.mx)).toMatch(/^220 /);

    const second = spawn(process.execPath, [CLI, 'start', '-c', configFile], { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    second.stderr!.on('data', (d) => { stderr += d; });
    const code = await new Promise<number | null>((r) => second.on('exit', r));
    expect(code).toBe(1);
    expect(stderr).toContain(`ichidan: the data folder ${dataDir} is in use by another running Ichidan (pid ${first.proc.pid}`);
    expect(await greeting(first.ports.mx)).toMatch(/^220 /);

    first.proc.kill('SIGKILL');
    await first.exited;
    first = await startChild(configFile);
    expect(await greeting(first.ports.mx)).toMatch(/^220 /);
    first.proc.kill('SIGTERM');
    expect(await first.exited).toBe(0);
    first = null;
  }, 60_000);

  it('refuses a second primary of workers on the folder, and leaves the first one\'s status file alone', async () => {
    const redis = await startRedis();
    try {
      await workers(redis);
    } finally {
      first?.proc.kill('SIGKILL');
      await redis.stop();
    }
  }, 60_000);

  async function workers(redis: TestRedis): Promise<void> {
    const text = await readFile(configFile, 'utf8');
    await writeFile(configFile, `${text}cluster: { redis: "${redis.url}" }\n`);
    first = await startChild(configFile, undefined, ['--workers', '2']);
    const status = join(dataDir, 'workers.json');
    const before = await readFile(status, 'utf8');
    const second = spawn(process.execPath, [CLI, 'start', '-c', configFile, '--workers', '2'], { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    second.stderr!.on('data', (d) => { stderr += d; });
    expect(await new Promise<number | null>((r) => second.on('exit', r))).toBe(1);
    expect(stderr).toContain(`is in use by another running Ichidan (pid ${first.proc.pid}`);
    expect(JSON.parse(await readFile(status, 'utf8')).primary).toBe(JSON.parse(before).primary);
    first.proc.kill('SIGTERM');
    expect(await first.exited).toBe(0);
    first = null;
    expect(existsSync(join(dataDir, 'running'))).toBe(false);
  }
});
