/*
 * A clamd of the test's own, on a free loopback port, that the test may kill (SIGKILL) and start
 * again on the same port: the shared daemons of scripts/engines.sh must never be killed by a test.
 * Its database holds only a signature written here (the EICAR text anywhere in a stream); its
 * scanning limits are the recommended ones of scripts/clamd-limits.conf (alerts when one is
 * reached), the file scripts/engines.sh gives the shared clamd.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { closedPort, EICAR } from './engine-contract.js';

export interface PrivateClamd {
  host: string;
  port: number;
  pid(): number | undefined;
  /** SIGKILL, and wait until it is gone. */
  kill(): Promise<void>;
  /** Starts it again on the same port and waits until it answers PING. */
  start(): Promise<void>;
  stop(): Promise<void>;
}

function ping(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect(port, '127.0.0.1', () => s.end('zPING\0'));
    let got = '';
    s.on('data', (d) => { got += d; });
    s.on('close', () => resolve(got.startsWith('PONG')));
    s.on('error', () => resolve(false));
  });
}

/** From test/helpers/ (or dist/test/helpers/) up to the checkout's scripts/. */
function limitsFile(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  while (dir !== dirname(dir)) {
    const candidate = join(dir, 'scripts', 'clamd-limits.conf');
    if (existsSync(candidate)) return candidate;
    dir = dirname(dir);
  }
  throw new Error('scripts/clamd-limits.conf not found above test/helpers');
}

const LIMITS = limitsFile();

export async function startPrivateClamd(): Promise<PrivateClamd> {
  const dir = await mkdtemp(join(tmpdir(), 'ichidan-clamd-'));
  await mkdir(join(dir, 'db'));
  await writeFile(join(dir, 'db', 'test.ndb'), `Private-Eicar:0:*:${Buffer.from(EICAR).toString('hex')}\n`);
  const port = await closedPort();
  const limits = (await readFile(LIMITS, 'utf8')).split('\n').filter((l) => l.trim() && !l.startsWith('#'));
  await writeFile(join(dir, 'clamd.conf'), [
    'Foreground yes', `DatabaseDirectory ${join(dir, 'db')}`, `TemporaryDirectory ${dir}`, `TCPSocket ${port}`, 'TCPAddr 127.0.0.1',
    'MaxThreads 8', 'Bytecode no', 'SelfCheck 0', `LogFile ${join(dir, 'clamd.log')}`, ...(process.getuid?.() === 0 ? ['User root'] : []),
    ...limits, '',
  ].join('\n'));
  let proc: ChildProcess | null = null;
  const clamd: PrivateClamd = {
    host: '127.0.0.1',
    port,
    pid: () => proc?.pid,
    async kill() {
      if (!proc || proc.exitCode !== null) return;
      const gone = new Promise((r) => proc!.once('exit', r));
      proc.kill('SIGKILL');
      await gone;
    },
    async start() {
      proc = spawn('clamd', ['-c', join(dir, 'clamd.conf')], { stdio: 'ignore' });
      const until = Date.now() + 20_000;
      while (!(await ping(port))) {
        if (proc.exitCode !== null) throw new Error(`private clamd exited with ${proc.exitCode}; see ${join(dir, 'clamd.log')}`);
        if (Date.now() > until) throw new Error('private clamd did not answer PING within 20 s');
        await new Promise((r) => setTimeout(r, 50));
      }
    },
    async stop() {
      await clamd.kill();
      await rm(dir, { recursive: true, force: true });
    },
  };
  await clamd.start();
  return clamd;
}
