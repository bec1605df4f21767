/*
 * Ichidan as a child process for the comparison benchmark: the built CLI (`mta-main start`) with a
 * config written here, its data folder under var/, its JSON log in a file.
 *
 * Takes: the config (an object; written as JSON, which YAML reads as it is) without `dataDir` and
 * the listener, which are added here: one MX listener on 127.0.0.1, plaintext, like the Postfix
 * relay it is compared with.
 * `args` are added to `start -c FILE` (e.g. --workers 2: the pid is then the primary's, whose
 * process tree holds the workers).
 * Gives: the running process (pid, port, log file, folder), once it reports ready on
 * ICHIDAN_READY_FD (a primary: once every worker listens), and `stop()`: SIGTERM, then SIGKILL if
 * a graceful stop (which waits for deliveries in flight, long ones at a tarpit) takes over 3 s;
 * then the folder is removed.
 * ICHIDAN_CLI=path/to/mta-main.js runs another build.
 */
import { spawn } from 'node:child_process';
import { existsSync, openSync, readFileSync } from 'node:fs';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { onCleanup, sleep } from './bench-cleanup.js';
import { freePort } from './bench-util.js';

const ROOT = join(import.meta.dirname, '..', '..');
export const CLI = process.env.ICHIDAN_CLI ?? join(ROOT, 'dist', 'mta', 'mta-main.js');

export interface IchidanInstance {
  pid: number;
  port: number;
  dir: string;
  logFile: string;
  /** Throws with the end of the log when the process has exited. */
  assertRunning(): void;
  stop(): Promise<void>;
}

export async function startIchidan(config: Record<string, unknown>, nodeArgs: string[] = [], args: string[] = []): Promise<IchidanInstance> {
  if (!existsSync(CLI)) throw new Error(`${CLI} not found: build first (npm run build)`);
  await mkdir(join(ROOT, 'var'), { recursive: true });
  const dir = await mkdtemp(join(ROOT, 'var', 'bench-ichidan-'));
  // BENCH_KEEP_DIRS=1 keeps each run's data folder (its log, its database) to look into afterwards.
  const removeDir = onCleanup(() => (process.env.BENCH_KEEP_DIRS === '1' ? Promise.resolve(console.log(`kept ${dir}`)) : rm(dir, { recursive: true, force: true })));
  const port = await freePort('127.0.0.1');
  const configFile = join(dir, 'config.yaml');
  await writeFile(configFile, JSON.stringify({
    ...config, dataDir: dir,
    listeners: [{ name: 'mx', role: 'mx', address: '127.0.0.1', port, tls: 'none' }],
  }, null, 2) + '\n');
  const logFile = join(dir, 'ichidan.log');
  const out = openSync(logFile, 'w');
  const proc = spawn(process.execPath, [...nodeArgs, CLI, 'start', '-c', configFile, ...args], {
    stdio: ['ignore', out, out, 'pipe'], cwd: dir, env: { ...process.env, ICHIDAN_READY_FD: '3' },
  });
  const exited = new Promise<void>((r) => proc.once('exit', () => r()));
  const running = () => proc.exitCode === null && proc.signalCode === null;
  const assertRunning = () => {
    if (!running()) throw new Error(`Ichidan exited (${proc.exitCode ?? proc.signalCode}); its log ends:\n${readFileSync(logFile, 'utf8').slice(-2000)}`);
  };
  const stopProcess = onCleanup(async () => {
    if (!running() || proc.pid === undefined) return;
    process.kill(proc.pid, 'SIGTERM');
    if (await Promise.race([exited.then(() => true), sleep(3000).then(() => false)])) return;
    process.kill(proc.pid, 'SIGKILL');
    await exited;
  });
  const ready = await new Promise<boolean>((resolve) => {
    let text = '';
    (proc.stdio[3] as NodeJS.ReadableStream).on('data', (d) => {
      text += d;
      if (text.includes('\n')) resolve(true);
    });
    exited.then(() => resolve(false));
  });
  if (!ready) assertRunning();
  return {
    pid: proc.pid!, port, dir, logFile, assertRunning,
    async stop() {
      await stopProcess();
      await removeDir();
    },
  };
}
