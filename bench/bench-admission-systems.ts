/*
 * The receiving systems of the admission benchmark, behind one shape: Ichidan with
 * `admission.mode` off or on, and a private Postfix with its defaults. Each accepts mail for
 * bench.test into its queue and delivers nowhere: Ichidan holds it (a `hold` route), Postfix puts
 * it on its hold queue (an access action at RCPT), so what is measured is admission and intake.
 *
 * Takes: which system, the scanning engine Ichidan runs on every message before its 250
 * (`engineConfig`: rspamd, clamd or none, from the running engines' file), and the learning
 * settings the benchmark shortens (`senders.flushEvery`, `pressure.learnAfter`).
 * Gives: a System: the address to send to, the root pid of its process tree (Ichidan's process,
 * Postfix's master), the lines of its log that name an admission level, `assertRunning()` and
 * `stop()`. `machineCpu()` and `enginePid()` help say what bounds the capacity.
 * Network: 127.0.0.1 only; Ichidan has no resolver configured, Postfix's DNS is off.
 */
import { existsSync, readFileSync } from 'node:fs';
import { request } from 'node:http';
import { join } from 'node:path';
import { startIchidan } from './bench-ichidan.js';
import { startPostfix } from './bench-postfix.js';
import type { Target } from './bench-admission-load.js';

/** More `admission:` settings for Ichidan's runs, as JSON (BENCH_ADMISSION='{"unknownScans":{"tolerance":0}}'), merged into the benchmark's own. */
const EXTRA_ADMISSION = JSON.parse(process.env.BENCH_ADMISSION ?? '{}') as Record<string, unknown>;

type Settings = Record<string, unknown>;
const isObject = (v: unknown): v is Settings => typeof v === 'object' && v !== null && !Array.isArray(v);
/** `extra` over `base`, objects merged key by key. */
function merged(base: Settings, extra: Settings): Settings {
  const out: Settings = { ...base };
  for (const [k, v] of Object.entries(extra)) out[k] = isObject(v) && isObject(out[k]) ? merged(out[k] as Settings, v) : v;
  return out;
}

export type SystemName = 'off' | 'on' | 'postfix';
export type EngineChoice = 'rspamd' | 'clamd' | 'none';

export const DOMAIN = 'bench.test';

export interface System {
  name: SystemName;
  target: Target;
  rootPid: number;
  logFile: string;
  /** GET /v1/admission: the level now and whether pressure is measured; null for Postfix, or when it does not answer within 800 ms. */
  admissionLevel(): Promise<{ level: string; measuring: boolean } | null>;
  /** The client networks Ichidan holds as known now (GET /v1/senders); null for Postfix, or when it keeps none. */
  knownNetworks(): Promise<string[] | null>;
  /** The admission metrics (`ichidan_admission_*` lines of GET /metrics on the admin socket); none for Postfix. */
  admissionMetrics(): Promise<string[]>;
  /** The buckets of the scan and spool sync histograms (`ichidan_scan_seconds`, `ichidan_spool_fsync_seconds`) now; none for Postfix, or when it does not answer within 800 ms. */
  timingMetrics(): Promise<string[]>;
  assertRunning(): void;
  stop(): Promise<void>;
}

interface EngineEntry { host: string; port: number; pidFile?: string }

function enginesFile(): string {
  return process.env.ICHIDAN_ENGINES_FILE ?? join(import.meta.dirname, '..', '..', 'state', 'engines', 'daemons.json');
}

function engineEntry(engine: Exclude<EngineChoice, 'none'>): EngineEntry {
  const file = enginesFile();
  if (!existsSync(file)) throw new Error(`${file} not found: run scripts/engines.sh start (or set ICHIDAN_ENGINES_FILE), or BENCH_ENGINE=none`);
  const entry = (JSON.parse(readFileSync(file, 'utf8')) as Record<string, EngineEntry>)[engine];
  if (!entry) throw new Error(`${file} has no ${engine} entry`);
  return entry;
}

/** Ichidan's `engines` list for the choice. */
export function engineConfig(engine: EngineChoice): Array<Record<string, unknown>> {
  if (engine === 'none') return [];
  const e = engineEntry(engine);
  return engine === 'rspamd'
    ? [{ name: 'rspamd', type: 'rspamd', url: `http://${e.host}:${e.port}` }]
    : [{ name: 'clamav', type: 'clamd', servers: [{ host: e.host, port: e.port }] }];
}

/** The engine daemon's main pid (its workers are its children), or null when it has no pid file. */
export function enginePid(engine: EngineChoice): number | null {
  if (engine === 'none') return null;
  const pidFile = engineEntry(engine).pidFile;
  return pidFile && existsSync(pidFile) ? Number(readFileSync(pidFile, 'utf8').trim()) : null;
}

/**
 * The kernel's count of connections dropped because a listener's accept queue was full
 * (TcpExt ListenDrops, /proc/net/netstat), machine-wide: a dropped SYN is sent again by the client
 * after 1 s, then 3 s, 7 s ... after its first try.
 */
export function listenDrops(): number {
  const rows = readFileSync('/proc/net/netstat', 'utf8').split('\n').filter((l) => l.startsWith('TcpExt:')).map((l) => l.trim().split(/\s+/));
  const i = rows[0]?.indexOf('ListenDrops') ?? -1;
  return i > 0 && rows[1] ? Number(rows[1][i]) : NaN;
}

/** Busy CPU seconds of the whole machine so far, all cores (/proc/stat). */
export function machineCpu(): number {
  const f = readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1).map(Number);
  return (f.reduce((a, b) => a + b, 0) - f[3] - f[4]) / 100;
}

export async function startSystem(name: SystemName, engine: EngineChoice, learning: { flushEvery: string; learnAfter: string }): Promise<System> {
  if (name === 'postfix') {
    const pf = await startPostfix('admission', '127.0.0.1', {
      // Every message goes to the hold queue: accepted and kept, never delivered. The domain needs
      // a transport all the same (smtpd refuses recipients whose transport is the error one).
      smtpd_recipient_restrictions: 'check_client_access static:HOLD',
      transport_maps: `inline:{ ${DOMAIN}=discard: }`,
    });
    return {
      name, target: { host: '127.0.0.1', port: pf.port }, rootPid: pf.masterPid, logFile: pf.maillog, admissionMetrics: async () => [], timingMetrics: async () => [], admissionLevel: async () => null, knownNetworks: async () => null,
      assertRunning: () => {
        try { process.kill(pf.masterPid, 0); } catch { throw new Error('the Postfix master has exited'); }
      },
      stop: () => pf.stop(),
    };
  }
  const ich = await startIchidan({
    hostname: 'mx.ichidan.bench.test',
    log: { level: 'info' },
    tenants: { bench: { domains: [DOMAIN] } },
    routes: { [DOMAIN]: { hold: true } },
    engines: engineConfig(engine),
    admission: { ...merged({ senders: { flushEvery: learning.flushEvery }, pressure: { learnAfter: learning.learnAfter } }, EXTRA_ADMISSION), mode: name },
  });
  /** The lines of GET /metrics on the admin socket that start with one of `prefixes`. */
  const metricLines = async (prefixes: string[], timeoutMs?: number) => (await getText(join(ich.dir, 'admin.sock'), '/metrics', timeoutMs)).split('\n')
    .filter((l) => prefixes.some((p) => l.startsWith(p)));
  return {
    name, target: { host: '127.0.0.1', port: ich.port }, rootPid: ich.pid, logFile: ich.logFile,
    admissionMetrics: () => metricLines(['ichidan_admission_']),
    timingMetrics: () => metricLines(['ichidan_scan_seconds_bucket', 'ichidan_spool_fsync_seconds_bucket'], 800).catch(() => []),
    knownNetworks: async () => {
      try {
        const answer = JSON.parse(await getText(join(ich.dir, 'admin.sock'), '/v1/senders?kind=network&standing=known&limit=10000')) as unknown;
        const list = Array.isArray(answer) ? answer : Object.values(answer as object).find(Array.isArray) ?? [];
        return (list as Array<{ key?: unknown }>).map((e) => String(e.key));
      } catch {
        return null; // no known senders in this build, or off
      }
    },
    admissionLevel: async () => {
      try {
        const status = JSON.parse(await getText(join(ich.dir, 'admin.sock'), '/v1/admission', 800)) as { level?: unknown; measuring?: unknown };
        return typeof status.level === 'string' ? { level: status.level, measuring: status.measuring !== false } : null;
      } catch {
        return null; // no such route in this build, or too slow to answer under the load
      }
    },
    assertRunning: () => ich.assertRunning(), stop: () => ich.stop(),
  };
}

/** A GET over a unix socket (the admin API), its body as text. */
function getText(socketPath: string, path: string, timeoutMs = 10_000): Promise<string> {
  return new Promise((resolve, reject) => {
    const req = request({ socketPath, path, method: 'GET', timeout: timeoutMs }, (res) => {
      const parts: Buffer[] = [];
      res.on('data', (c: Buffer) => parts.push(c));
      res.on('end', () => (res.statusCode === 200 ? resolve(Buffer.concat(parts).toString()) : reject(new Error(`GET ${path}: ${res.statusCode}`))));
    });
    req.on('error', reject);
    req.on('timeout', () => req.destroy(new Error(`GET ${path}: no answer within ${timeoutMs} ms`)));
    req.end();
  });
}

/**
 * The changes of admission level the system's log names (`pressure normal → busy: why`), in
 * order, each with its time (ms since the Unix epoch). Postfix has none.
 */
export function levelChanges(system: System): Array<{ at: number; level: string; previous: string; why: string }> {
  if (system.name === 'postfix' || !existsSync(system.logFile)) return [];
  const out: Array<{ at: number; level: string; previous: string; why: string }> = [];
  for (const line of readFileSync(system.logFile, 'utf8').split('\n')) {
    if (!line.includes('"pressure ')) continue;
    try {
      const rec = JSON.parse(line) as { time?: unknown; msg?: unknown };
      const m = /^pressure (\w+) → (\w+): (.*)$/s.exec(String(rec.msg));
      if (m) out.push({ at: typeof rec.time === 'number' ? rec.time : Date.parse(String(rec.time)), previous: m[1], level: m[2], why: m[3] });
    } catch {
      // not a JSON line
    }
  }
  return out;
}

/** Of a histogram's observations between two readings of its buckets (summed over labels): how many, and how many took longer than each bound. */
export function slowerThan(before: string[], after: string[], name: string, bounds: number[]): { n: number; over: number[] } {
  const at = (lines: string[], le: string) => lines.filter((l) => l.startsWith(`${name}_bucket{`) && l.includes(`le="${le}"`))
    .reduce((n, l) => n + Number(l.split(' ').at(-1)), 0);
  const between = (le: string) => at(after, le) - at(before, le);
  const n = between('+Inf');
  return { n, over: bounds.map((b) => n - between(String(b))) };
}
