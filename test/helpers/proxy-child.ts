/*
 * Ichidan with its proxy listener as a child process, for scenarios in which a crash must show:
 * every connection to the proxy "was going" to the destination named on the command line (as
 * the kernel would say after a redirect), everything else is the real process.
 *
 * Run from dist/: `node proxy-child.js CONFIG.json HOST:PORT`. Reports its bound listeners on
 * fd 3 once ready, as `ichidan start` does; logs go to stdout. `startProxyChild` spawns it.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createWriteStream, existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Ichidan, parseConfig } from '../../mta/index.js';
import { createLogger } from '../../mta/mta-log.js';

export interface ProxyChild {
  proc: ChildProcess;
  ports: Record<string, number>;
  exited: Promise<number | null>;
  /** Everything the child wrote on stderr so far (an uncaught error's stack lands here). */
  stderr(): string;
}

const SCRIPT = join(import.meta.dirname, '..', '..', 'dist', 'test', 'helpers', 'proxy-child.js');

export function startProxyChild(configFile: string, destination: string, logFile?: NodeJS.WritableStream): Promise<ProxyChild> {
  if (!existsSync(SCRIPT)) return Promise.reject(new Error(`${SCRIPT} is missing: build with "npx tsc -p tsconfig.json" first`));
  return new Promise((resolve, reject) => {
    const proc = spawn(process.execPath, [SCRIPT, configFile, destination], {
      stdio: ['ignore', logFile ? 'pipe' : 'ignore', 'pipe', 'pipe'],
      env: { ...process.env, ICHIDAN_READY_FD: '3' },
    });
    if (logFile) proc.stdout!.pipe(logFile, { end: false });
    let stderr = '';
    proc.stderr!.on('data', (d) => { stderr += d; });
    const exited = new Promise<number | null>((r) => proc.on('exit', (code, signal) => r(code ?? (signal ? -1 : null))));
    let ready = '';
    (proc.stdio[3] as NodeJS.ReadableStream).on('data', (d) => {
      ready += d;
      if (!ready.includes('\n')) return;
      const msg = JSON.parse(ready.split('\n')[0]) as { listeners: Array<{ name: string; port: number }> };
      resolve({ proc, exited, stderr: () => stderr, ports: Object.fromEntries(msg.listeners.map((l) => [l.name, l.port])) });
    });
    exited.then((code) => reject(new Error(`the proxy child exited (${code}) before it was ready: ${stderr}`)));
  });
}

async function main(configFile: string, destination: string): Promise<void> {
  const config = parseConfig(JSON.parse(readFileSync(configFile, 'utf8')), configFile);
  const [address, port] = [destination.slice(0, destination.lastIndexOf(':')), Number(destination.slice(destination.lastIndexOf(':') + 1))];
  const app = await Ichidan.start(config, createLogger(config.log.level), { originalDst: () => ({ address, port, family: 4 }) });
  process.on('SIGTERM', () => { void app.stop().finally(() => process.exit(0)); });
  createWriteStream('', { fd: 3 }).end(JSON.stringify({ ready: true, listeners: app.bound }) + '\n');
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) await main(process.argv[2], process.argv[3]);
