/*
 * Reloading the configuration while the process runs.
 *
 * Takes: the config file (the one the process started from, unless told another), the config in
 *   force, and `publish`, the composition root's way to put a validated config into force (it
 *   builds everything that can fail before anything changes), and how the file becomes this
 *   process's config (a worker's has its own data folder: mta-workers.ts).
 * Gives: `reloadConfig`, which reads and validates the file and publishes it, or changes nothing
 *   and names the problems; `needsRestart`, the changed settings a running process cannot apply
 *   (`RESTART_ONLY`, one typed accessor per documented key); `watchConfig`, which reloads when
 *   the file changes (admin.watchConfig); `FileWatch`, which reloads when a certificate or key
 *   file the config names changes (admin.watchConfig too: a renewal needs no command).
 * Touches: the config file and the folder it sits in (watched); the certificate files (polled).
 * Settings: admin.watchConfig; every other setting is read through mta-config.ts.
 */
import { readFileSync, unwatchFile, watch, watchFile, type FSWatcher, type Stats } from 'node:fs';
import { basename, dirname } from 'node:path';
import type { Logger } from 'pino';
import type { Config } from './mta-config-schema.js';
import { ConfigError, loadConfig } from './mta-config.js';

/** Settings a reload cannot apply to a running process, each by its key in the config file. */
export const RESTART_ONLY = {
  dataDir: (c) => c.dataDir,
  // A listener's certificate and PROXY settings are applied live (as `tls` is); the rest needs new sockets.
  listeners: (c) => c.listeners.map(({ cert: _c, key: _k, proxyProtocol: _p, ...rest }) => rest),
  admin: (c) => c.admin,
  'queue.fsync': (c) => c.queue.fsync,
  'proxy.eventsFile': (c) => c.proxy.eventsFile,
  'proxy.webhook': (c) => c.proxy.webhook,
  'auth.workers': (c) => c.auth.workers,
  'auth.queue': (c) => c.auth.queue,
} as const satisfies Record<string, (config: Config) => unknown>;

export function needsRestart(before: Config, after: Config): string[] {
  return Object.entries(RESTART_ONLY)
    .filter(([, read]) => JSON.stringify(read(before)) !== JSON.stringify(read(after)))
    .map(([key]) => key);
}

export type ReloadResult =
  | { ok: true; generation: number; needsRestart: string[] }
  | { ok: false; problems: string[] };

/** Reads and validates `file`; a bad file changes nothing and is reported, naming the keys. */
export function reloadConfig(file: string, current: Config, publish: (config: Config) => number, log: Logger, load: (file: string) => Config = loadConfig): ReloadResult {
  let config: Config;
  try {
    config = load(file);
  } catch (err) {
    const problems = err instanceof ConfigError ? err.problems : [(err as Error).message];
    log.error({ file, problems }, 'reload refused: the running configuration stays');
    return { ok: false, problems };
  }
  const restart = needsRestart(current, config);
  let generation: number;
  try {
    generation = publish(config);
  } catch (err) {
    // A certificate that cannot be offered (ingress-certificates.ts) names its key in each problem.
    const problems = (err as { problems?: string[] }).problems ?? [(err as Error).message];
    log.error({ file, problems }, 'reload failed: the running configuration stays');
    return { ok: false, problems };
  }
  log.info({ file, generation, engines: config.engines.map((e) => e.name), needsRestart: restart }, 'configuration reloaded');
  if (restart.length > 0) log.warn({ needsRestart: restart }, 'some changed settings apply only after a restart');
  return { ok: true, generation, needsRestart: restart };
}

/** Calls `reload` when the file's text changes: editors write in bursts (truncate, write, rename), so wait for quiet. */
export function watchConfig(file: string, reload: () => void, log: Logger): FSWatcher {
  let timer: NodeJS.Timeout | null = null;
  let last = '';
  const check = () => {
    timer = null;
    let text: string;
    try {
      text = readFileSync(file, 'utf8');
    } catch {
      return;
    }
    if (text === last) return;
    last = text;
    reload();
  };
  try {
    last = readFileSync(file, 'utf8');
  } catch {
    // reported at the first reload
  }
  // The folder is watched, not the file: an editor that renames a new file into place replaces the inode.
  const watcher = watch(dirname(file), (_event, name) => {
    if (name !== null && name !== basename(file)) return;
    if (timer) clearTimeout(timer);
    timer = setTimeout(check, 300);
  });
  watcher.on('error', (err) => log.warn({ err, file }, 'cannot watch the config file any more; reload with SIGHUP or ichidan reload'));
  watcher.on('close', () => { if (timer) clearTimeout(timer); });
  return watcher;
}

/**
 * Calls `changed` when one of the files it is given changes (a new inode, size or modification
 * time, seen through symlinks: certbot renews by pointing live/ at new files). Polled, a few stat
 * calls every `intervalMs`: certificate folders are often not watchable (symlinks, other mounts).
 * A renewal writes a certificate and a key one after the other: the call waits for `quietMs` of quiet.
 */
export class FileWatch {
  readonly #files = new Map<string, (cur: Stats, prev: Stats) => void>();
  #timer: NodeJS.Timeout | null = null;

  constructor(private readonly changed: () => void, private readonly intervalMs = 2000, private readonly quietMs = 1000) {}

  /** Watches exactly `files` from now on. */
  set(files: readonly string[]): void {
    const wanted = new Set(files);
    for (const [file, listener] of this.#files) {
      if (wanted.has(file)) continue;
      unwatchFile(file, listener);
      this.#files.delete(file);
    }
    for (const file of wanted) {
      if (this.#files.has(file)) continue;
      const listener = (cur: Stats, prev: Stats) => {
        if (cur.ino === prev.ino && cur.size === prev.size && cur.mtimeMs === prev.mtimeMs) return;
        if (this.#timer) clearTimeout(this.#timer);
        this.#timer = setTimeout(() => { this.#timer = null; this.changed(); }, this.quietMs);
        this.#timer.unref();
      };
      watchFile(file, { interval: this.intervalMs, persistent: false }, listener);
      this.#files.set(file, listener);
    }
  }

  close(): void {
    this.set([]);
    if (this.#timer) clearTimeout(this.#timer);
  }
}
