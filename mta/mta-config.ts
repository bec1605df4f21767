/*
 * Loading and holding the configuration.
 *
 * `loadConfig` reads one YAML file, makes the relative paths in it relative to the file's folder
 * (mta-config-path.ts), validates it against `configSchema` and returns a frozen snapshot, or throws a `ConfigError` whose lines each name a key path and what is allowed there.
 * `ConfigHandle` holds the snapshot in force with a generation number; an SMTP transaction borrows
 * the snapshot current when it starts and keeps it to its end, so a reload is "publish a new
 * snapshot", never "change flags in place".
 * `adminSocket` says where the admin API listens, for the process and the CLI alike.
 */
import { readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { parseDocument } from 'yaml';
import type { z } from 'zod';
import { configSchema, type Config, type ConfigInput } from './mta-config-schema.js';
import { resolveConfigPaths } from './mta-config-path.js';

export class ConfigError extends Error {
  readonly code = 'ICHIDAN_ERR_CONFIG';
  constructor(readonly source: string, readonly problems: string[]) {
    super(`${source}: invalid configuration\n${problems.map((p) => `  - ${p}`).join('\n')}`);
  }
}

function formatPath(path: readonly PropertyKey[]): string {
  let out = '';
  for (const part of path) {
    if (typeof part === 'number') out += `[${part}]`;
    else out += out ? `.${String(part)}` : String(part);
  }
  return out || '(top level)';
}

function describeIssue(issue: z.core.$ZodIssue): string {
  const where = formatPath(issue.path);
  if (issue.code === 'unrecognized_keys') {
    return issue.keys.map((k) => `${where === '(top level)' ? k : `${where}.${k}`}: unknown key`).join('\n  - ');
  }
  if (issue.code === 'invalid_value') {
    return `${where}: must be one of ${issue.values.map((v) => JSON.stringify(v)).join(', ')}`;
  }
  return `${where}: ${issue.message}`;
}

function deepFreeze<T>(value: T): T {
  if (value && typeof value === 'object' && !Object.isFrozen(value)) {
    Object.freeze(value);
    for (const v of Object.values(value as object)) deepFreeze(v);
  }
  return value;
}

/** Validates an already-parsed object (tests and the embedded default use this). */
export function parseConfig(input: unknown, source = 'config'): Config {
  const result = configSchema.safeParse(input ?? {});
  if (!result.success) throw new ConfigError(source, result.error.issues.map(describeIssue));
  return deepFreeze(result.data);
}

/**
 * `override` changes the parsed file before it is validated (a command-line flag that stands for a
 * key, such as `start --workers`), so the flag's value is checked, and named, as that key.
 */
export function loadConfig(file: string, override?: (input: Record<string, unknown>) => Record<string, unknown>): Config {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new ConfigError(file, [`cannot read the file: ${(err as Error).message}`]);
  }
  const doc = parseDocument(text, { uniqueKeys: true });
  if (doc.errors.length > 0) {
    throw new ConfigError(file, doc.errors.map((e) => `YAML syntax (line ${e.linePos?.[0].line ?? '?'}): ${e.message.split('\n')[0]}`));
  }
  const input: unknown = doc.toJS();
  const isObject = input !== null && typeof input === 'object' && !Array.isArray(input);
  if (!(isObject || input == null)) return parseConfig(input, file);
  const resolved = resolveConfigPaths((input ?? {}) as Record<string, unknown>, dirname(resolve(file)));
  return parseConfig(override ? override(resolved) : resolved, file);
}

export interface ConfigSnapshot {
  readonly generation: number;
  readonly config: Config;
}

export class ConfigHandle {
  #current: ConfigSnapshot;
  constructor(config: Config) {
    this.#current = Object.freeze({ generation: 1, config });
  }
  /** The snapshot in force now; hold on to it for the whole of a transaction. */
  get current(): ConfigSnapshot {
    return this.#current;
  }
  publish(config: Config): ConfigSnapshot {
    this.#current = Object.freeze({ generation: this.#current.generation + 1, config });
    return this.#current;
  }
}

/** The admin API's unix socket: `admin.socket`, else admin.sock in the data folder. */
export function adminSocket(config: Config): string {
  return config.admin.socket ?? join(config.dataDir, 'admin.sock');
}

export type { Config, ConfigInput };
