/*
 * Which config file a command reads, and what the paths written in it mean.
 *
 * `configPath` is the one rule every command follows to pick the file: `--config FILE`, else the
 * environment's ICHIDAN_CONFIG, else /etc/ichidan/ichidan.yaml when it exists, else the embedded
 * default (config/default.yaml of this package, found from this module, wherever the package is
 * installed). The path it gives is absolute, so a reload reads the same file whatever the
 * current folder has become.
 * `resolveConfigPaths` makes every relative path inside a file relative to that file's folder,
 * not to the current folder: `CONFIG_PATH_KEYS` lists the keys that hold paths (a test walks the
 * schema so that a new path-valued key cannot be left out). It works on the parsed YAML before
 * validation, because validation reads some of those files (recipient lists, DKIM keys, the CA).
 * Settings: every key in CONFIG_PATH_KEYS.
 */
import { existsSync } from 'node:fs';
import { isAbsolute, join, resolve } from 'node:path';
import { packageRoot } from './mta-package.js';

/** The system-wide config file, used when neither --config nor ICHIDAN_CONFIG names one. */
export const SYSTEM_CONFIG = '/etc/ichidan/ichidan.yaml';

/**
 * The keys whose values are paths; "*" stands for any array index or record key. Not
 * auth.backend.socket: its schema takes an absolute path or "host:port" only (ABSOLUTE_PATH_KEYS).
 */
export const CONFIG_PATH_KEYS = [
  'dataDir',
  'log.file',
  'tls.cert', 'tls.key', 'tls.sni.*.cert', 'tls.sni.*.key',
  'listeners.*.cert', 'listeners.*.key',
  'admin.socket',
  'proxy.eventsFile',
  'delivery.tls.caFile',
  'engines.*.servers.*.socket',
  'tenants.*.recipients.file', 'tenants.*.recipients.domains.*.file',
  'tenants.*.dkim.*.key',
] as const;

/** The embedded default: config/default.yaml in the package this module belongs to (from dist/ too). */
export function embeddedConfig(): string {
  const root = packageRoot();
  if (root === null) throw new Error('no package.json above mta/mta-config-path: the embedded default config cannot be found');
  return join(root, 'config', 'default.yaml');
}

/** The config file a command reads: `--config`, ICHIDAN_CONFIG, /etc/ichidan/ichidan.yaml, the embedded default. */
export function configPath(flag: string | undefined, env: NodeJS.ProcessEnv = process.env, system = SYSTEM_CONFIG): string {
  if (flag !== undefined && flag !== '') return resolve(flag);
  if (env.ICHIDAN_CONFIG) return resolve(env.ICHIDAN_CONFIG);
  if (existsSync(system)) return system;
  return embeddedConfig();
}

/** Path-valued keys whose schema refuses a relative path, so nothing here reads them. */
export const ABSOLUTE_PATH_KEYS = ['auth.backend.socket'] as const;

function resolveAt(node: unknown, keys: readonly string[], dir: string): void {
  if (node === null || typeof node !== 'object') return;
  const [key, ...rest] = keys;
  const record = node as Record<string, unknown>;
  const names = key === '*' ? Object.keys(record) : [key];
  for (const name of names) {
    if (!Object.hasOwn(record, name)) continue;
    const value = record[name];
    if (rest.length > 0) resolveAt(value, rest, dir);
    else if (typeof value === 'string' && value !== '' && !isAbsolute(value)) record[name] = resolve(dir, value);
  }
}

/**
 * Makes the relative paths of a parsed config file absolute against `dir`, the file's folder, in
 * place; values of the wrong type are left for validation to name. dataDir, when not given, is
 * "var" beside the file (the schema's default "./var", read the same way).
 */
export function resolveConfigPaths(input: Record<string, unknown>, dir: string): Record<string, unknown> {
  if (!Object.hasOwn(input, 'dataDir')) input.dataDir = './var';
  for (const key of CONFIG_PATH_KEYS) resolveAt(input, key.split('.'), dir);
  return input;
}
