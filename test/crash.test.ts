// Crash test: Ichidan under steady load is killed with SIGKILL at random moments, several rounds;
// after the last restart every message that got a 250 must reach the sink. Counts are printed.
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startChild, type ChildIchidan } from './helpers/child.js';
import { CrashLoad } from './helpers/crash-load.js';
import { startSink, type Sink } from './helpers/sink.js';

const ROUNDS = 6;
const SESSIONS = 12;

describe('crash safety', () => {
  let sink: Sink;
  let dataDir: string;
  let configFile: string;

  beforeAll(async () => {
    // The sink answers slowly now and then so that some mail is still queued at each kill.
    sink = await startSink({ host: '127.0.0.2', data: (n) => (n % 7 === 0 ? { code: 451, text: '4.3.0 try again' } : undefined) });
    dataDir = await mkdtemp(join(tmpdir(), 'ichidan-crash-'));
    configFile = join(dataDir, 'config.yaml');
    await writeFile(configFile, [
      `dataDir: ${dataDir}`,
      'hostname: crash.ichidan.test',
      'log: { level: warn }',
      'listeners: [{ name: mx, role: mx, port: 0 }]',
      'trustedNetworks: [127.0.0.1/32]',
      'queue: { retryInitial: 100ms, retryMax: 300ms }',
      `routes: { "*": { host: 127.0.0.2, port: ${sink.port} } }`,
      '',
    ].join('\n'));
  });
  afterAll(async () => {
    await sink?.close();
    await rm(dataDir, { recursive: true, force: true });
  });

  it('loses no acknowledged message across repeated SIGKILLs', async () => {
    const load = new CrashLoad((token) => `Subject: ${token}\r\nX-Token: ${token}\r\n\r\n${'body line\r\n'.repeat(20)}`);

    let child: ChildIchidan | null = null;
    for (let round = 0; round < ROUNDS; round++) {
      child = await startChild(configFile);
      const until = { stop: false };
      const sessions = load.run(child.ports.mx, SESSIONS, until);
      await new Promise((r) => setTimeout(r, 300 + Math.random() * 900));
      child.proc.kill('SIGKILL');
      await child.exited;
      until.stop = true;
      await sessions;
    }
    // Last start: no load, just let the queue drain.
    child = await startChild(configFile);
    const received = () => new Set(sink.messages.map((m) => /X-Token: (t\d+)/.exec(m.data.toString())?.[1]).filter(Boolean) as string[]);
    const until = Date.now() + 60_000;
    while ([...load.acknowledged.keys()].some((t) => !received().has(t)) && Date.now() < until) await new Promise((r) => setTimeout(r, 200));
    child.proc.kill('SIGTERM');
    await child.exited;

    const got = received();
    const lost = [...load.acknowledged.keys()].filter((t) => !got.has(t));
    const duplicates = sink.messages.length - got.size;
    console.log(`crash test: ${ROUNDS} SIGKILL rounds, ${load.sent} messages attempted, ${load.acknowledged.size} acknowledged with 250, ${got.size} delivered, ${lost.length} lost, ${duplicates} duplicate deliveries`);
    expect(load.acknowledged.size).toBeGreaterThan(ROUNDS * 20);
    expect(lost).toEqual([]);
  }, 180_000);
});
