/*
 * Ichidan as a child process (the built CLI), for tests that kill it: it reports its bound
 * listeners on fd 3 once ready (a primary of workers also lists its workers' pids). `args` are
 * added to `start -c FILE` (e.g. --workers 2).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { join, sep } from 'node:path';

export interface ChildIchidan {
  proc: ChildProcess;
  ports: Record<string, number>;
  /** The workers a primary (start --workers N) reported, by index; empty for a single process. */
  workers: Array<{ index: number; pid: number }>;
  exited: Promise<number | null>;
}

/** The checkout's root: above test/helpers, or above dist/test/helpers when a benchmark runs this built. */
const ROOT = join(import.meta.dirname, '..', '..', ...(import.meta.dirname.split(sep).includes('dist') ? ['..'] : []));

/** The built ichidan executable (mta-main), as `node CLI ...` runs it. */
export const CLI = join(ROOT, 'dist', 'mta', 'mta-main.js');

export function startChild(configFile: string, logFile?: NodeJS.WritableStream, args: string[] = []): Promise<ChildIchidan> {
  return new Promise((resolve, reject) => {
    const proc = spawn(process.execPath, [CLI, 'start', '-c', configFile, ...args], {
      stdio: ['ignore', logFile ? 'pipe' : 'ignore', 'pipe', 'pipe'],
      env: { ...process.env, ICHIDAN_READY_FD: '3' },
    });
    if (logFile) proc.stdout!.pipe(logFile, { end: false });
    let stderr = '';
    proc.stderr!.on('data', (d) => { stderr += d; });
    const exited = new Promise<number | null>((r) => proc.on('exit', (code) => r(code)));
    // A test process that ends without stopping it (a failed or timed-out suite) takes it along.
    const orphan = () => { proc.kill('SIGKILL'); };
    process.once('exit', orphan);
    proc.on('exit', () => process.off('exit', orphan));
    let ready = '';
    const fd3 = proc.stdio[3] as NodeJS.ReadableStream;
    fd3.on('data', (d) => {
      ready += d;
      if (!ready.includes('\n')) return;
      const msg = JSON.parse(ready.split('\n')[0]) as { listeners: Array<{ name: string; port: number }>; workers?: ChildIchidan['workers'] };
      resolve({ proc, exited, ports: Object.fromEntries(msg.listeners.map((l) => [l.name, l.port])), workers: msg.workers ?? [] });
    });
    exited.then((code) => reject(new Error(`ichidan exited (${code}) before it was ready: ${stderr}`)));
  });
}
