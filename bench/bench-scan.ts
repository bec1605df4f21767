/*
 * The scanning benchmark, with the real daemons `scripts/engines.sh start` runs.
 *
 * 1. Each engine alone: its adapter driven directly with BENCH_SESSIONS scans in flight, over the
 *    same message smtp-source sends — the engine's own rate on this machine, now.
 * 2. Scan overhead: the runner over clamd + rspamd + ICAP together, one message at a time and with
 *    BENCH_SESSIONS in flight: p50 / p99 of (verdict time − slowest engine's time), i.e. what
 *    running them in parallel and deciding costs on top of waiting for the slowest.
 * 3. Through SMTP: smtp-source (connections reused) → Ichidan (fsync on) → smtp-sink, messages
 *    per second from the first connection to the last delivery, without engines and with clamd +
 *    rspamd, the latter as a fraction of the slower engine's own rate from (1).
 *
 * Results go to stdout and bench/results/scan-<date>.json. Everything is on loopback; no DNS is
 * configured.
 * Last line: `RESULT {json}` (bench-result.ts): scanned_msgs, unscanned_msgs, ratio_to_slowest_engine,
 *   scanned_cpu_ms, then every figure by its path.
 */
import { execFileSync, spawn } from 'node:child_process';
import { createReadStream, existsSync, openSync, readFileSync } from 'node:fs';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';

import os from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import pino from 'pino';
import { spoolMessage, type Engine, type ScanContext } from '../engines/engine.js';
import { engineSchema, scanningSchema, type EngineConfig } from '../engines/engines-config.js';
import { definitionOf } from '../engines/engines-registry.js';
import { EngineRunner, type EngineEntry } from '../engines/engines-run.js';
import { freePort, run, waitForPort } from './bench-util.js';
import { printResult } from './bench-result.js';

const ROOT = join(import.meta.dirname, '..', '..');
const CLI = join(ROOT, 'dist', 'mta', 'mta-main.js');
const SESSIONS = Number(process.env.BENCH_SESSIONS ?? 20);
const COUNT = Number(process.env.BENCH_COUNT ?? 3000);
const OVERHEAD_COUNT = Number(process.env.BENCH_OVERHEAD_COUNT ?? 1000);

interface Daemons {
  clamd: { host: string; port: number };
  rspamd: { host: string; port: number };
  icap: { host: string; port: number; service: string };
}

function daemons(): Daemons {
  const file = process.env.ICHIDAN_ENGINES_FILE ?? join(ROOT, 'state', 'engines', 'daemons.json');
  if (!existsSync(file)) throw new Error(`${file} not found: run scripts/engines.sh start first`);
  return JSON.parse(readFileSync(file, 'utf8')) as Daemons;
}

function engineConfigs(d: Daemons): Record<'clamd' | 'rspamd' | 'icap', EngineConfig> {
  return {
    clamd: engineSchema.parse({ name: 'clamav', type: 'clamd', servers: [{ host: d.clamd.host, port: d.clamd.port }] }),
    rspamd: engineSchema.parse({ name: 'rspamd', type: 'rspamd', url: `http://${d.rspamd.host}:${d.rspamd.port}` }),
    icap: engineSchema.parse({ name: 'icap', type: 'icap', server: { host: d.icap.host, port: d.icap.port }, service: d.icap.service }),
  };
}

const log = pino({ level: 'silent' });
const deps = { hostname: 'bench.ichidan.test', resolver: null, log };
const context: ScanContext = {
  queueId: 'BENCH', client: '127.0.0.1', helo: 'source.test', sender: 'bench@source.test', recipients: ['sink@far.test'], authUser: null, tenants: ['_relay'],
};

/** The message every part of the benchmark uses: headers and about 2 KB of text. */
function sample(): string {
  const lines = ['From: <bench@source.test>', 'To: <sink@far.test>', 'Subject: benchmark message', 'Date: Wed, 25 Nov 2026 10:00:00 +0000',
    'Message-ID: <bench-1@source.test>', 'MIME-Version: 1.0', 'Content-Type: text/plain; charset=us-ascii', ''];
  for (let i = 0; lines.join('\r\n').length < 2048; i++) lines.push(`Line ${i} of a plain benchmark message about the quarterly figures.`);
  return lines.join('\r\n') + '\r\n';
}

/** Busy CPU seconds of the whole machine so far (all cores, from /proc/stat). */
function machineCpu(): number {
  const f = readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1).map(Number);
  const idle = f[3] + f[4];
  return (f.reduce((a, b) => a + b, 0) - idle) / 100;
}

async function pool(count: number, sessions: number, task: (i: number) => Promise<void>): Promise<number> {
  let next = 0;
  const t0 = performance.now();
  await Promise.all(Array.from({ length: sessions }, async () => {
    while (next < count) await task(next++);
  }));
  return (performance.now() - t0) / 1000;
}

async function engineAlone(engine: Engine, file: string, size: number): Promise<{ rate: number; errors: number; cpuMsPerMessage: number }> {
  const msg = spoolMessage(file, size);
  let errors = 0;
  const cpu0 = machineCpu();
  const seconds = await pool(COUNT, SESSIONS, async () => {
    const r = await engine.scan(msg, context, AbortSignal.timeout(30_000));
    if (r.outcome.status === 'error') errors++;
  });
  return { rate: COUNT / seconds, errors, cpuMsPerMessage: ((machineCpu() - cpu0) * 1000) / COUNT };
}

const pct = (xs: number[], p: number) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor(s.length * p))];
};

async function overhead(entries: EngineEntry[], file: string, size: number, sessions: number): Promise<{ p50: number; p99: number; verdictP50: number }> {
  const runner = new EngineRunner(entries, scanningSchema.parse({}), {});
  const msg = spoolMessage(file, size);
  const over: number[] = [];
  const total: number[] = [];
  await pool(OVERHEAD_COUNT, sessions, async () => {
    const d = await runner.scan(msg, context, AbortSignal.timeout(30_000));
    if (d.runs.some((r) => r.result?.outcome.status === 'error')) throw new Error(`an engine failed: ${JSON.stringify(d.runs)}`);
    over.push(d.overheadMs);
    total.push(d.ms);
  });
  return { p50: pct(over, 0.5), p99: pct(over, 0.99), verdictP50: pct(total, 0.5) };
}

/** smtp-source → Ichidan with the given engines → smtp-sink; messages/s first connection to last delivery. */
async function throughSmtp(d: Daemons, file: string, engines: string): Promise<{ rate: number; delivered: number; cpuMsPerMessage: number }> {
  const dir = await mkdtemp(join(ROOT, 'var', 'bench-scan-'));
  const port = await freePort();
  const sinkPort = await freePort();
  const sink = spawn('smtp-sink', ['-u', 'root', `127.0.0.2:${sinkPort}`, '1024'], { stdio: 'ignore' });
  const config = join(dir, 'config.yaml');
  await writeFile(config, [
    `dataDir: ${dir}`,
    'hostname: bench.ichidan.test',
    `listeners: [{ name: mx, role: mx, port: ${port} }]`,
    'trustedNetworks: [127.0.0.1/32]',
    'queue: { concurrency: 100, laneConcurrency: 100 }',
    `routes: { "*": { host: 127.0.0.2, port: ${sinkPort} } }`,
    `engines: ${engines}`,
    '',
  ].join('\n'));
  const logFile = join(dir, 'ichidan.log');
  const proc = spawn(process.execPath, [CLI, 'start', '-c', config], { stdio: ['ignore', openSync(logFile, 'w'), 'inherit'] });
  try {
    await waitForPort('127.0.0.1', port);
    await waitForPort('127.0.0.2', sinkPort);
    const t0 = Date.now();
    const cpu0 = machineCpu();
    await run('smtp-source', ['-d', '-s', String(SESSIONS), '-m', String(COUNT), '-F', file, '-f', 'bench@source.test', '-t', 'sink@far.test', '-M', 'source.test', `127.0.0.1:${port}`]);
    let delivered = 0;
    let last = 0;
    for (let waited = 0; waited < 120_000; waited += 250) {
      delivered = 0;
      for await (const line of createInterface({ input: createReadStream(logFile) })) {
        if (!line.includes('"verdict":"delivered"')) continue;
        delivered++;
        last = Math.max(last, Date.parse((JSON.parse(line) as { time: string }).time));
      }
      if (delivered >= COUNT) break;
      await new Promise((r) => setTimeout(r, 250));
    }
    if (delivered < COUNT) throw new Error(`only ${delivered} of ${COUNT} delivered; see ${logFile}`);
    // CPU of the whole machine over the run (the log polling above is a small part of it).
    return { rate: COUNT / ((last - t0) / 1000), delivered, cpuMsPerMessage: ((machineCpu() - cpu0) * 1000) / COUNT };
  } finally {
    proc.kill('SIGTERM');
    sink.kill('SIGTERM');
    await new Promise((r) => proc.on('exit', r));
    await rm(dir, { recursive: true, force: true });
  }
}

async function main(): Promise<void> {
  execFileSync('which', ['smtp-source']);
  if (!existsSync(CLI)) throw new Error('build first: npm run build');
  const d = daemons();
  const cfg = engineConfigs(d);
  await mkdir(join(ROOT, 'var'), { recursive: true });
  const work = await mkdtemp(join(ROOT, 'var', 'bench-scan-msg-'));
  const text = sample();
  const file = join(work, 'sample.eml');
  await writeFile(file, text);
  // smtp-source sends each line of its file with CRLF added: give it the same lines ending in LF.
  const sourceFile = join(work, 'sample-lf.txt');
  await writeFile(sourceFile, text.replace(/\r\n/g, '\n'));
  const size = Buffer.byteLength(text);
  const make = (c: EngineConfig): EngineEntry => ({ type: c.type, options: c, engine: definitionOf(c.type).create(c, deps) });
  const entries = { clamd: make(cfg.clamd), rspamd: make(cfg.rspamd), icap: make(cfg.icap) };
  try {
    console.log(`message: ${size} bytes; ${SESSIONS} in flight; ${COUNT} scans per engine`);
    const alone: Record<string, { rate: number; errors: number; cpuMsPerMessage: number }> = {};
    for (const [name, e] of Object.entries(entries)) {
      alone[name] = await engineAlone(e.engine, file, size);
      console.log(`  ${name.padEnd(7)} alone: ${alone[name].rate.toFixed(0).padStart(6)} scans/s  machine CPU ${alone[name].cpuMsPerMessage.toFixed(2)} ms/scan${alone[name].errors ? `  (${alone[name].errors} errors)` : ''}`);
    }
    const all = Object.values(entries);
    const serial = await overhead(all, file, size, 1);
    const parallel = await overhead(all, file, size, SESSIONS);
    console.log(`scan overhead (verdict − slowest engine), clamd + rspamd + ICAP, ${OVERHEAD_COUNT} scans:`);
    console.log(`  one at a time:   p50 ${serial.p50.toFixed(3)} ms  p99 ${serial.p99.toFixed(3)} ms  (verdict p50 ${serial.verdictP50.toFixed(2)} ms)`);
    console.log(`  ${SESSIONS} in flight:    p50 ${parallel.p50.toFixed(3)} ms  p99 ${parallel.p99.toFixed(3)} ms  (verdict p50 ${parallel.verdictP50.toFixed(2)} ms)`);
    const smtpEngines = `[{ name: clamav, type: clamd, servers: [{ host: ${d.clamd.host}, port: ${d.clamd.port} }] }, { name: rspamd, type: rspamd, url: "http://${d.rspamd.host}:${d.rspamd.port}" }]`;
    const bare = await throughSmtp(d, sourceFile, '[]');
    const smtp = await throughSmtp(d, sourceFile, smtpEngines);
    const slowest = Math.min(alone.clamd.rate, alone.rspamd.rate);
    console.log(`through SMTP (${SESSIONS} sessions, connections reused), durable, to smtp-sink:`);
    console.log(`  no engines:       ${bare.rate.toFixed(0).padStart(5)} msg/s  machine CPU ${bare.cpuMsPerMessage.toFixed(2)} ms/msg`);
    console.log(`  clamd + rspamd:   ${smtp.rate.toFixed(0).padStart(5)} msg/s  machine CPU ${smtp.cpuMsPerMessage.toFixed(2)} ms/msg = ${(smtp.rate / slowest * 100).toFixed(0)}% of the slower engine alone (${slowest.toFixed(0)}/s), ${(smtp.rate / bare.rate * 100).toFixed(0)}% of the rate without engines`);
    const parts = bare.cpuMsPerMessage + alone.clamd.cpuMsPerMessage + alone.rspamd.cpuMsPerMessage;
    console.log(`  CPU check: relay alone + clamd alone + rspamd alone = ${parts.toFixed(2)} ms/msg; ${os.cpus().length} cores allow at most ${(os.cpus().length * 1000 / parts).toFixed(0)} msg/s`);
    const when = new Date().toISOString();
    const out = join(ROOT, 'bench', 'results', `scan-${when.slice(0, 10)}.json`);
    await mkdir(join(ROOT, 'bench', 'results'), { recursive: true });
    await writeFile(out, JSON.stringify({ when, node: process.version, messageBytes: size, sessions: SESSIONS, count: COUNT, alone, overhead: { serial, parallel }, smtp: { ...smtp, ratioToSlowestEngine: smtp.rate / slowest, withoutEngines: bare.rate } }, null, 2) + '\n');
    console.log(`results written to ${out}`);
    printResult({ alone, overhead: { serial, parallel }, smtp: { ...smtp, ratioToSlowestEngine: smtp.rate / slowest, withoutEngines: bare.rate } },
      { scanned_msgs: smtp.rate, unscanned_msgs: bare.rate, ratio_to_slowest_engine: smtp.rate / slowest, scanned_cpu_ms: smtp.cpuMsPerMessage });
  } finally {
    await Promise.all(Object.values(entries).map((e) => e.engine.close()));
    await rm(work, { recursive: true, force: true });
  }
}

await main();
