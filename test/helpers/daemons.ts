/*
 * Where the real scanning daemons listen, for tests that talk to them.
 *
 * Takes: state/engines/daemons.json as written by `scripts/engines.sh start` (another file with
 * ICHIDAN_ENGINES_FILE), and each daemon's pid file named in it.
 * Gives: `realDaemon(name)`, the daemon's address, or null when it is not running; with CI set, a
 * missing daemon is an error instead, so a CI run can never pass by skipping the real engines.
 * `SKIP_REASON` goes into the title of a suite skipped for that reason.
 * Network: none. The check is synchronous (suites decide `skipIf` at collection time), so it trusts
 * the file for the address and only asks the kernel whether the pid is alive.
 */
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

export type DaemonName = 'clamd' | 'spamd' | 'rspamd' | 'icap';

export interface RealDaemonAddress {
  host: string;
  port: number;
  /** clamd's unix socket. */
  socket?: string;
  /** rspamd's controller worker. */
  controllerPort?: number;
  /** The ICAP service name, as in icap://host:port/<service>. */
  service?: string;
}

export const SKIP_REASON = 'real daemon; skipped unless it runs (scripts/engines.sh start)';

interface Entry extends RealDaemonAddress {
  pidFile?: string;
}

/** The checkout's root: the nearest folder above this file holding package.json (also from dist/). */
function repoRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  while (!existsSync(join(dir, 'package.json'))) {
    const parent = dirname(dir);
    if (parent === dir) throw new Error('test/helpers/daemons.ts: no package.json above this file');
    dir = parent;
  }
  return dir;
}

export function enginesFile(): string {
  return process.env.ICHIDAN_ENGINES_FILE ?? join(repoRoot(), 'state', 'engines', 'daemons.json');
}

function alive(pidFile: string): boolean {
  let pid: number;
  try {
    pid = Number.parseInt(readFileSync(pidFile, 'utf8').trim(), 10);
  } catch {
    return false;
  }
  if (!Number.isInteger(pid) || pid <= 0) return false;
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    // EPERM: the process exists but belongs to another user (the daemon dropped privileges).
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Why `name` is not usable, or null when it is. */
function lookup(name: DaemonName): { entry: Entry; problem: null } | { entry: null; problem: string } {
  const file = enginesFile();
  let listed: Partial<Record<DaemonName, Entry>>;
  try {
    listed = JSON.parse(readFileSync(file, 'utf8')) as Partial<Record<DaemonName, Entry>>;
  } catch (error) {
    return { entry: null, problem: `${file} is unreadable (${(error as Error).message})` };
  }
  const entry = listed[name];
  if (!entry || typeof entry.host !== 'string' || typeof entry.port !== 'number') {
    return { entry: null, problem: `${file} has no ${name} entry` };
  }
  if (entry.pidFile !== undefined && !alive(entry.pidFile)) {
    return { entry: null, problem: `no live process in ${entry.pidFile}` };
  }
  return { entry, problem: null };
}

export function realDaemon(name: DaemonName): RealDaemonAddress | null {
  const { entry, problem } = lookup(name);
  if (entry === null) {
    if (process.env.CI) {
      throw new Error(`the real ${name} is not running (${problem}); run scripts/engines.sh start before the tests`);
    }
    return null;
  }
  const { pidFile: _pidFile, ...address } = entry;
  return address;
}
