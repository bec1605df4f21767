// admin.watchConfig: a child process reloads when its config file changes, and ignores a bad version.
import { execFile } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { stringify } from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { baseConfig, waitUntil } from './helpers/app.js';
import { CLI, startChild, type ChildIchidan } from './helpers/child.js';
import { sleep } from './helpers/engine-traffic.js';

const exec = promisify(execFile);

describe('admin.watchConfig', () => {
  let dir: string;
  let child: ChildIchidan | null = null;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'ichidan-test-'));
  });
  afterAll(async () => {
    if (child) {
      child.proc.kill('SIGTERM');
      await child.exited;
    }
    await rm(dir, { recursive: true, force: true });
  });

  it('reloads when the file changes, and ignores a bad version of it', async () => {
    const file = join(dir, 'ichidan.yaml');
    const config = (virus: string) => stringify(baseConfig(join(dir, 'data'), {
      listeners: [{ name: 'mx', role: 'mx', port: 0 }], admin: { watchConfig: true }, scanning: { virus } as never,
    }));
    await writeFile(file, config('reject'));
    // The CLI reads a config of its own (to find the admin socket): the watched one will be broken on purpose.
    const cliFile = join(dir, 'cli.yaml');
    await writeFile(cliFile, config('reject'));
    child = await startChild(file);
    const generation = async () => Number(/^generation (\d+)/.exec((await exec(process.execPath, [CLI, 'engines', 'list', '-c', cliFile])).stdout)?.[1]);
    expect(await generation()).toBe(1);
    await writeFile(file, config('quarantine'));
    await waitUntil(async () => (await generation()) === 2, 10_000, 'the reload after the change');
    await writeFile(file, config('shred'));
    await sleep(1_000);
    expect(await generation()).toBe(2);
    expect(child.proc.exitCode).toBeNull();
    await writeFile(file, config('reject'));
    await waitUntil(async () => (await generation()) === 3, 10_000, 'the reload after the fix');
  });
});
