/*
 * The transparent proxy on loopback for a scenario: Ichidan with one proxy listener whose every
 * client connection "was going" where the test says (as the kernel would say after a redirect;
 * test/proxy-netns.test.ts does that for real), sinks as destinations, swaks as a legacy MTA.
 *
 * Takes: the destination of each connection (a function, so a test can move it), extra config.
 * Gives: proxy(), sink(), to(), swaks(), and a cleanup list that the file empties in afterEach
 * with runCleanup (servers and Ichidan stopped in the reverse order of their start).
 */
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import type { OriginalDst } from '../../mta/proxy/proxy-origdst.js';
import { baseConfig, startApp, type ConfigInput, type TestApp } from './app.js';
import { startSink, type Sink, type SinkOptions } from './sink.js';

export type { OriginalDst };

const run = promisify(execFile);

export const cleanup: Array<() => Promise<unknown>> = [];

export async function runCleanup(): Promise<void> {
  for (const c of cleanup.splice(0).reverse()) await c();
}

/** A sink closed at the end of the test. */
export async function sink(opts: SinkOptions): Promise<Sink> {
  const s = await startSink(opts);
  cleanup.push(() => s.close());
  return s;
}

/** Ichidan with one proxy listener; every client connection "was going" to `dst()`. */
export async function proxy(dst: () => OriginalDst | null, extra: (dataDir: string) => Partial<ConfigInput> = () => ({})): Promise<TestApp> {
  const t = await startApp((dataDir) => baseConfig(dataDir, {
    listeners: [{ name: 'proxy', role: 'proxy', port: 0, tls: 'none' }],
    trustedNetworks: ['127.0.0.1/32'],
    queue: { fsync: false },
    ...extra(dataDir),
  }), { originalDst: () => dst() });
  cleanup.push(() => t.stop());
  return t;
}

/** The original destination of a connection redirected to `s`. */
export const to = (s: Sink): OriginalDst => ({ address: s.host, port: s.port, family: 4 });

/** One swaks transaction through the proxy; its transcript (stdout), whatever the outcome. */
export async function swaks(port: number, args: string[]): Promise<string> {
  const { stdout } = await run('swaks', ['--server', `127.0.0.1:${port}`, '--helo', 'legacy.test', '--hide-informational', ...args]).catch((e: { stdout: string }) => ({ stdout: e.stdout }));
  return stdout;
}
