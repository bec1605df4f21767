/*
 * What the `ichidan` commands share: loading the config (exit 1 with the problems), options (and
 * `--worker I`, which points a command at one worker's data folder and socket), the
 * queue database opened read-only, requests to the running process's admin API (admin-client.ts),
 * and safe output.
 * Touches: the config file, the queue database in dataDir, the admin socket (mta-config.ts
 * `adminSocket`). Nothing here loads the daemon.
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import Database from 'better-sqlite3';
import type { Config } from '../mta-config-schema.js';
import { adminRequest } from '../admin/admin-client.js';
import { adminSocket, ConfigError, loadConfig } from '../mta-config.js';
import { configPath } from '../mta-config-path.js';
import { workerConfig, workerDataDir } from '../mta-workers.js';

export function loadOrExit(file: string, load: (file: string) => Config = loadConfig): Config {
  try {
    return load(file);
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(err.message + '\n');
      process.exit(1);
    }
    throw err;
  }
}

/**
 * `-c FILE` (else ICHIDAN_CONFIG, /etc/ichidan/ichidan.yaml, the embedded default: `configPath`), and `--worker I`: the command is about worker I of a primary (start --workers N), so
 * its data folder and admin socket are that worker's (mta-workers.ts `workerConfig`).
 */
export function options(args: string[], extra: Record<string, { type: 'string' }> = {}) {
  const { values, positionals } = parseArgs({ args, options: { config: { type: 'string', short: 'c' }, worker: { type: 'string' }, ...extra }, allowPositionals: true });
  const config = loadOrExit(configPath(values.config));
  const worker = values.worker === undefined ? null : Number(values.worker);
  if (worker !== null && !(Number.isInteger(worker) && worker >= 1 && existsSync(workerDataDir(config.dataDir, worker)))) {
    process.stderr.write(`--worker ${values.worker}: no such worker (no folder ${workerDataDir(config.dataDir, Number(values.worker) || 0)}; see ichidan workers)\n`);
    process.exit(2);
  }
  return { config: worker === null ? config : workerConfig(config, worker), values: values as Record<string, string | undefined>, positionals };
}

/** Options that name what an operator action applies to (ichidan queue, ichidan tenants). */
export const SCOPE_OPTIONS = { message: { type: 'string' }, tenant: { type: 'string' }, site: { type: 'string' }, for: { type: 'string' }, reason: { type: 'string' } } as const;

export function openDb(dataDir: string, readonly = true): Database.Database {
  try {
    return new Database(join(dataDir, 'queue.db'), { readonly, fileMustExist: true });
  } catch (err) {
    process.stderr.write(`cannot open the queue database in ${dataDir}: ${(err as Error).message}\n`);
    process.exit(1);
  }
}

/** Text that came from mail or engines, safe on a terminal and in tab-separated output. */
export const safe = (s: unknown) => String(s).replace(/[\x00-\x1f\x7f-\x9f]/g, '?');

export const iso = (ms: number) => new Date(ms).toISOString().replace(/\.\d+Z$/, 'Z');

/** A request to the running process; exits 1 with a clear message when none runs or it refuses. */
export async function admin(config: Config, method: string, url: string, body?: unknown): Promise<Record<string, unknown>> {
  try {
    const res = await adminRequest(adminSocket(config), method, url, body);
    if (res.status >= 400) {
      const problems = Array.isArray(res.body.problems) ? (res.body.problems as string[]).join('\n') : String(res.body.error ?? `status ${res.status}`);
      process.stderr.write(problems + '\n');
      process.exit(1);
    }
    return res.body;
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code !== 'ENOENT' && code !== 'ECONNREFUSED') throw err;
    process.stderr.write(`Ichidan is not running (no admin socket at ${adminSocket(config)})\n`);
    process.exit(1);
  }
}

/** Exits 2 with the usage text. */
export function usage(text: string): never {
  process.stderr.write(text + '\n');
  process.exit(2);
}
