/*
 * Per-client limits against IPv6 clients that pick a new address from their /64 for each
 * connection: in a private network namespace whose loopback carries several addresses of one /64
 * (and one of another), the built CLI listens on ::1 with `limits.client.maxConnections: 2`; a
 * client script inside the namespace connects from each address in turn and reports the greetings.
 *
 * Needs root and iproute2 (CI must have them: test/helpers/netns.ts), and dist/ built by tsc.
 */
import type { ChildProcess } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { canUseNetns, NetnsLab } from './helpers/netns.js';

const CLI = join(import.meta.dirname, '..', 'dist', 'mta', 'mta-main.js');
const SAME_64 = ['fd00:64:1:1::a', 'fd00:64:1:1::b', 'fd00:64:1:1:ffff::c', 'fd00:64:1:1:1234::d'];
const OTHER_64 = 'fd00:64:1:2::a';

/** Connects to [::1]:port from each address given, holding every connection open, and prints each greeting's first line. */
const CLIENT = `
const net = require('node:net');
const [port, ...sources] = process.argv.slice(1);
(async () => {
  const greetings = [];
  for (const localAddress of sources) {
    greetings.push(await new Promise((resolve) => {
      const s = net.connect({ host: '::1', port: Number(port), localAddress });
      let buf = '';
      s.on('data', (d) => { buf += d; if (buf.includes('\\r\\n')) resolve(localAddress + ' ' + buf.split('\\r\\n')[0]); });
      s.on('error', (e) => resolve(localAddress + ' error ' + e.message));
    }));
  }
  console.log(JSON.stringify(greetings));
  process.exit(0);
})();
`;

const support = canUseNetns();

describe.skipIf(!support.ok)(`per-client limits count an IPv6 /64 as one client${support.ok ? '' : ` (skipped: ${support.reason})`}`, () => {
  const lab = new NetnsLab();
  let ns: string;
  let dataDir: string;
  let port: number;
  let ichidan: ChildProcess;
  const log: string[] = [];

  beforeAll(async () => {
    dataDir = await mkdtemp(join(tmpdir(), 'ichidan-wt-edge-v6-'));
    ns = lab.namespace('wtedge-v6');
    for (const address of [...SAME_64, OTHER_64]) lab.address(ns, 'lo', `${address}/128`);
    const config = {
      hostname: 'mx.ichidan.test',
      dataDir,
      log: { level: 'info' },
      listeners: [{ name: 'mx', role: 'mx', address: '::1', port: 0, tls: 'none' }],
      queue: { fsync: false },
      limits: { client: { maxConnections: 2 } },
    };
    const file = join(dataDir, 'config.yaml');
    await writeFile(file, JSON.stringify(config, null, 2));
    ichidan = lab.spawn(ns, process.execPath, [CLI, 'start', '-c', file], {
      stdio: ['ignore', 'pipe', 'pipe', 'pipe'],
      env: { ...process.env, ICHIDAN_READY_FD: '3' },
    });
    for (const stream of [ichidan.stdout!, ichidan.stderr!]) createInterface({ input: stream }).on('line', (line) => log.push(line));
    const ready = await new Promise<{ listeners: Array<{ name: string; port: number }> }>((resolve, reject) => {
      createInterface({ input: ichidan.stdio[3] as NodeJS.ReadableStream }).once('line', (line) => resolve(JSON.parse(line)));
      ichidan.once('exit', (code) => reject(new Error(`Ichidan exited (${code}) before it was ready:\n${log.join('\n')}`)));
    });
    port = ready.listeners.find((l) => l.name === 'mx')!.port;
  }, 30_000);

  afterAll(async () => {
    await lab.cleanup();
    if (dataDir) await rm(dataDir, { recursive: true, force: true });
  });

  it('refuses the third connection from one /64 whatever its address, and greets another /64', async () => {
    const run = await lab.run(ns, process.execPath, ['-e', CLIENT, String(port), ...SAME_64, OTHER_64]);
    expect(run.code, run.stderr).toBe(0);
    const greetings = JSON.parse(run.stdout) as string[];
    expect(greetings.map((g) => g.split(' ').slice(1, 3).join(' '))).toEqual([
      '220 mx.ichidan.test', '220 mx.ichidan.test', '421 4.7.0', '421 4.7.0', '220 mx.ichidan.test',
    ]);
  });
});
