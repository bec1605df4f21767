/*
 * What the `ichidan` commands share: the config they run with, the global options, failing with
 * one line, the queue database opened read-only, requests to the running process's admin API
 * (admin-client.ts), JSON and safe text output.
 *
 * Takes: the global options `-c, --config FILE` and `--worker I` (cli-commands.ts declares them;
 *   `--worker I` points a command at worker I's data folder and socket, mta-workers.ts).
 * Gives: `loadCliConfig`, the one place every command (and `start`) loads its config through;
 *   `commandConfig` (the config a command's global options name); `fail` and `usage` (exit 1 and 2,
 *   the line starting "ichidan: "); `openDb`, `admin`, `printJson`, `safe`, `iso`.
 * Touches: the config file, the queue database in dataDir, the admin socket (mta-config.ts
 *   `adminSocket`). Nothing here loads the daemon; the config schema and the database driver are
 *   loaded when a command needs them, so `--help` and `completion` start quickly.
 * Exit status: 0 done; 1 the command failed or was refused (the reason on stderr: the running
 * process's own words as it gives them, else a line "ichidan: ..."); 2 a usage error.
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import type Database from 'better-sqlite3';
import { InvalidArgumentError, type Command } from 'commander';
import type { Config } from '../mta-config-schema.js';
import { adminRequest } from '../admin/admin-client.js';
import type { ConfigError } from '../mta-config.js';
import { configPath } from '../mta-config-path.js';

/** The options every command takes (cli-commands.ts). */
export interface GlobalOptions {
  config?: string;
  worker?: string;
}

/** Ends the command: `ichidan: MESSAGE` on stderr, exit 1 (2 for a usage error). */
export function fail(message: string, code = 1): never {
  process.stderr.write(`ichidan: ${message}\n`);
  process.exit(code);
}

/** Exits 2: the command line itself is wrong. */
export function usage(message: string): never {
  fail(message, 2);
}

/** A config problem, named by file and key: one line for one problem, else a line per problem. */
function configFailure(err: ConfigError): never {
  if (err.problems.length === 1) fail(`${err.source}: ${err.problems[0]}`);
  fail(`${err.source}: invalid configuration\n${err.problems.map((p) => `  - ${p}`).join('\n')}`);
}

/**
 * The config a command runs with, and its file: the one function every command loads it through.
 * `path` is `-c FILE` when given; without it, $ICHIDAN_CONFIG, else /etc/ichidan/ichidan.yaml
 * when it exists, else the embedded config/default.yaml (mta-config-path.ts `configPath`). A config that cannot be read or
 * is invalid ends the command (exit 1) naming the file and each key. `load` is how the file is read
 * (`start` passes its own, for `--workers`).
 */
export async function loadCliConfig(path?: string, load?: (file: string) => Config): Promise<{ file: string; config: Config }> {
  const file = configPath(path);
  const { ConfigError, loadConfig } = await import('../mta-config.js');
  try {
    return { file, config: (load ?? loadConfig)(file) };
  } catch (err) {
    if (err instanceof ConfigError) configFailure(err);
    throw err;
  }
}

/**
 * The config for the command being run, from its global options: `-c FILE`, and `--worker I` (the
 * command is about worker I of a primary started with `start --workers N`, so its data folder and
 * admin socket are that worker's: mta-workers.ts `workerConfig`).
 */
export async function commandConfig(cmd: Command): Promise<Config> {
  const globals = cmd.optsWithGlobals<GlobalOptions>();
  const { config } = await loadCliConfig(globals.config);
  if (globals.worker === undefined) return config;
  const { workerConfig, workerDataDir } = await import('../mta-workers.js');
  const worker = Number(globals.worker);
  if (!(Number.isInteger(worker) && worker >= 1 && existsSync(workerDataDir(config.dataDir, worker)))) {
    usage(`--worker ${globals.worker}: no such worker (no folder ${workerDataDir(config.dataDir, worker || 0)}; see ichidan workers)`);
  }
  return workerConfig(config, worker);
}

/** The queue database, read-only unless asked; a missing one ends the command naming where it looked. */
export async function openDb(dataDir: string, readonly = true): Promise<Database.Database> {
  const file = join(dataDir, 'queue.db');
  if (!existsSync(file)) fail(`no queue database at ${file} (dataDir ${dataDir}: has Ichidan run with this config?)`);
  const { default: Database } = await import('better-sqlite3');
  try {
    return new Database(file, { readonly, fileMustExist: true });
  } catch (err) {
    fail(`cannot open the queue database ${file}: ${(err as Error).message}`);
  }
}

/** Text that came from mail or engines, safe on a terminal and in tab-separated output. */
export const safe = (s: unknown) => String(s).replace(/[\x00-\x1f\x7f-\x9f]/g, '?');

export const iso = (ms: number) => new Date(ms).toISOString().replace(/\.\d+Z$/, 'Z');

/** `--json` output: the data as it is, indented. */
export function printJson(data: unknown): void {
  process.stdout.write(JSON.stringify(data, null, 2) + '\n');
}

/** Why the admin socket could not be used, in words. */
function unreachable(err: unknown): string {
  const code = (err as NodeJS.ErrnoException).code;
  if (code === 'ENOENT') return 'no such socket (is Ichidan running with this config?)';
  if (code === 'ECONNREFUSED') return 'connection refused (is Ichidan running with this config?)';
  if (code === 'EACCES') return 'permission denied (run as the user Ichidan runs as)';
  if (err instanceof SyntaxError) return `the answer is not JSON (${err.message})`;
  return (err as Error).message;
}

/** True when the running process cannot be reached (no socket, or nothing listening on it). */
export function notRunning(err: unknown): boolean {
  const code = (err as NodeJS.ErrnoException).code;
  return code === 'ENOENT' || code === 'ECONNREFUSED';
}

/** A request to the running process; exits 1 with a clear message when none runs or it refuses. */
export async function admin(config: Config, method: string, url: string, body?: unknown): Promise<Record<string, unknown>> {
  const { adminSocket } = await import('../mta-config.js');
  const socket = adminSocket(config);
  let res: Awaited<ReturnType<typeof adminRequest>>;
  try {
    res = await adminRequest(socket, method, url, body);
  } catch (err) {
    fail(`cannot reach the running process at ${socket}: ${unreachable(err)}`);
  }
  if (res.status >= 400) {
    // The process's own words: what it refused and why.
    const problems = Array.isArray(res.body.problems) ? (res.body.problems as string[]).join('\n') : String(res.body.error ?? `status ${res.status}`);
    process.stderr.write(problems + '\n');
    process.exit(1);
  }
  return res.body;
}

/** The admin request for callers that handle "not running" themselves (quarantine release). */
export async function adminOrNull(config: Config, method: string, url: string): Promise<{ status: number; body: Record<string, unknown> } | null> {
  const { adminSocket } = await import('../mta-config.js');
  const socket = adminSocket(config);
  try {
    return await adminRequest(socket, method, url);
  } catch (err) {
    if (notRunning(err)) return null;
    fail(`cannot reach the running process at ${socket}: ${unreachable(err)}`);
  }
}

/** A `--last N`, `--days N` value (given to commander as the option's parser): a whole number of at least 1. */
export function positiveInt(value: string): number {
  const n = Number(value);
  if (!/^\d+$/.test(value) || !Number.isSafeInteger(n) || n < 1) throw new InvalidArgumentError('a positive whole number is needed');
  return n;
}
