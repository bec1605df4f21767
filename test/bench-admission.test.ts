/*
 * The admission benchmark's harness, without timing anything: its SMTP sender against a scripted
 * server on loopback (every ending an attempt can have), the pacer's rate, cap and cut, the flood
 * in its worker thread on the main thread's clock (run from dist/, as the benchmark runs it), and
 * the figures, table and plot made from attempts.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { Clock, floodAddress, knownAddress, messageBody, network24, Pacer, sendOne, type Attempt, type Envelope } from '../bench/bench-admission-load.js';
import { levelStrip, perSecond, plot, summarize, table } from '../bench/bench-admission-report.js';
import { listenDrops, slowerThan } from '../bench/bench-admission-systems.js';

type Script = (socket: Socket, line: string, n: number) => void;

/** A server that greets (or not) and answers each line by `script`; data lines after 354 are swallowed up to the dot. */
async function scripted(greeting: string | null, script: Script): Promise<Server & { port: number }> {
  const server = createServer((socket) => {
    socket.on('error', () => undefined);
    if (greeting) socket.write(`${greeting}\r\n`);
    let buffer = '', n = 0, inData = false;
    socket.on('data', (d) => {
      buffer += d.toString('latin1');
      let nl: number;
      while ((nl = buffer.indexOf('\n')) >= 0) {
        const line = buffer.slice(0, nl).replace(/\r$/, '');
        buffer = buffer.slice(nl + 1);
        if (inData) {
          if (line === '.') { inData = false; script(socket, '.', n++); }
          continue;
        }
        if (line === 'DATA') inData = true;
        script(socket, line, n++);
      }
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return Object.assign(server, { port: (server.address() as { port: number }).port });
}

const happy: Script = (s, line) => {
  if (line.startsWith('EHLO')) s.write('250-test\r\n250 PIPELINING\r\n');
  else if (line === 'DATA') s.write('354 go on\r\n');
  else if (line === 'QUIT') s.end('221 bye\r\n');
  else s.write('250 ok\r\n');
};

const env: Envelope = { from: 'a@b.test', to: 'c@bench.test', body: messageBody(600, 'a@b.test', 'c@bench.test') };
const servers: Server[] = [];
const serve = async (greeting: string | null, script: Script) => {
  const s = await scripted(greeting, script);
  servers.push(s);
  return { host: '127.0.0.1', port: s.port };
};

afterEach(async () => {
  for (const s of servers.splice(0)) await new Promise((r) => s.close(r));
});

describe('the sender', () => {
  it('times an accepted message and sends it from the chosen address', async () => {
    let peer = '';
    const target = await serve('220 hi', (s, line, n) => { peer = s.remoteAddress!; happy(s, line, n); });
    const a = await sendOne(target, '127.10.3.2', env, new Clock(), 5000);
    expect(a).toMatchObject({ outcome: 'accepted', stage: 'dot', code: 250 });
    expect(a.ms).toBeGreaterThan(0);
    expect(a.greetMs).toBeGreaterThan(0);
    expect(a.dotMs).toBeGreaterThan(0);
    expect(a.greetMs! + a.dotMs!).toBeLessThanOrEqual(a.ms);
    expect(peer).toBe('127.10.3.2');
  });

  it.each([
    ['421 at connect', '421 4.7.0 try later', happy, { outcome: 'deferred', stage: 'connect', code: 421 }],
    ['451 at RCPT', '220 hi', ((s, line, n) => (line.startsWith('RCPT') ? s.write('451 4.7.1 later\r\n') : happy(s, line, n))) as Script, { outcome: 'deferred', stage: 'rcpt', code: 451 }],
    ['550 after the dot', '220 hi', ((s, line, n) => (line === '.' ? s.write('550 5.7.1 no\r\n') : happy(s, line, n))) as Script, { outcome: 'rejected', stage: 'dot', code: 550 }],
    ['a close mid-dialogue', '220 hi', ((s, line, n) => (line.startsWith('MAIL') ? s.destroy() : happy(s, line, n))) as Script, { outcome: 'failed', stage: 'ehlo', code: null }],
  ])('reports %s', async (_name, greeting, script, expected) => {
    const a = await sendOne(await serve(greeting, script), '127.0.0.1', env, new Clock(), 5000);
    expect(a).toMatchObject(expected);
  });

  it('fails an attempt past its timeout, and one refused at connect', async () => {
    const silent = await serve(null, () => undefined);
    const a = await sendOne(silent, '127.0.0.1', env, new Clock(), 200);
    expect(a).toMatchObject({ outcome: 'failed', stage: 'connect', code: null });
    expect(a.ms).toBeGreaterThanOrEqual(190);
    const closed = await serve(null, () => undefined);
    await new Promise((r) => servers.pop()!.close(r));
    expect(await sendOne(closed, '127.0.0.1', env, new Clock(), 2000)).toMatchObject({ outcome: 'failed', code: null });
  });
});

describe('the pacer', () => {
  it('starts attempts at its rate, skips past its cap and cuts what is left at stop', async () => {
    // Past EHLO, nothing is answered: every attempt stays in flight.
    const target = await serve('220 hi', (s, line, n) => (line.startsWith('EHLO') ? happy(s, line, n) : undefined));
    const clock = new Clock();
    const pacer = new Pacer({ target, address: () => '127.0.0.1', envelope: () => env, timeoutMs: 10_000 }, clock, 100, 5);
    await new Promise((r) => setTimeout(r, 300));
    await pacer.stop(100);
    expect(pacer.attempts.length).toBe(5);
    expect(pacer.cut).toBe(5);
    expect(pacer.attempts.every((a) => a.outcome === 'failed')).toBe(true);
    expect(pacer.skipped).toBeGreaterThanOrEqual(15);
    expect(pacer.skipped + pacer.attempts.length).toBeLessThanOrEqual(35);
  });
});

/** Each thread of this process and its nice value (/proc/self/task/<tid>/stat, the 19th field). */
function threadNices(): Map<number, number> {
  const nices = new Map<number, number>();
  for (const tid of readdirSync('/proc/self/task')) {
    let stat: string;
    try { stat = readFileSync(`/proc/self/task/${tid}/stat`, 'utf8'); } catch { continue; }
    nices.set(Number(tid), Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[16]));
  }
  return nices;
}

describe('the flood in a thread of its own', () => {
  it('a clock made from another\'s origin reads the same time', async () => {
    const clock = new Clock();
    await new Promise((r) => setTimeout(r, 20));
    const shared = new Clock(clock.origin);
    expect(Math.abs(shared.now() - clock.now())).toBeLessThan(1);
    expect(clock.now()).toBeGreaterThanOrEqual(19);
  });

  it('paces its attempts in a worker thread (as built in dist/) and hands them back timed against the main thread\'s clock', async () => {
    const { prepareFlood } = await import(join(import.meta.dirname, '..', 'dist', 'bench', 'bench-admission-flood.js')) as typeof import('../bench/bench-admission-flood.js');
    const target = await serve('220 hi', happy);
    const clock = new Clock();
    const before = threadNices();
    const flood = await prepareFlood({ target, rate: 100, maxInFlight: 50, size: 600, timeoutMs: 5000, domain: 'bench.test', nice: 10 }, clock);
    await new Promise((r) => setTimeout(r, 200));
    // The flood's thread alone runs at the lower priority: the process's other threads keep theirs.
    const during = threadNices();
    const lowered = [...during].filter(([tid, nice]) => nice === 10 && before.get(tid) !== 10);
    expect(lowered).toHaveLength(1);
    expect(during.get(process.pid)).toBe(before.get(process.pid));
    const startedAt = clock.now();
    flood.start();
    await new Promise((r) => setTimeout(r, 500));
    const { attempts, skipped, cut } = await flood.stop(2000);
    expect(attempts.length).toBeGreaterThanOrEqual(30);
    expect(attempts.length).toBeLessThanOrEqual(70);
    expect(attempts.every((a) => a.outcome === 'accepted')).toBe(true);
    expect({ skipped, cut }).toEqual({ skipped: 0, cut: 0 });
    // Started once told to, their times on the main thread's clock.
    const first = Math.min(...attempts.map((a) => a.at));
    expect(first).toBeGreaterThanOrEqual(startedAt);
    expect(first).toBeLessThan(startedAt + 100);
  });
});

describe('a histogram between two readings', () => {
  it('counts the observations between them, and those above each bound, summed over labels', () => {
    const reading = (a: number[], b: number[]) => [
      ...['0.01', '0.025', '+Inf'].map((le, i) => `ichidan_scan_seconds_bucket{le="${le}",engine="rspamd"} ${a[i]}`),
      ...['0.01', '0.025', '+Inf'].map((le, i) => `ichidan_scan_seconds_bucket{le="${le}",engine="clamav"} ${b[i]}`),
      'ichidan_spool_fsync_seconds_bucket{le="+Inf"} 99',
    ];
    const got = slowerThan(reading([10, 12, 13], [5, 5, 5]), reading([50, 55, 60], [6, 7, 9]), 'ichidan_scan_seconds', [0.01, 0.025]);
    // rspamd 47 new (40 within 10 ms, 43 within 25), clamav 4 new (1 within 10, 2 within 25).
    expect(got).toEqual({ n: 51, over: [51 - 41, 51 - 45] });
    expect(slowerThan([], [], 'ichidan_scan_seconds', [0.01])).toEqual({ n: 0, over: [0] });
  });
});

describe('the kernel\'s counter', () => {
  it('reads the listen drops from /proc/net/netstat as a count', () => {
    const n = listenDrops();
    expect(Number.isInteger(n)).toBe(true);
    expect(n).toBeGreaterThanOrEqual(0);
  });
});

describe('addresses', () => {
  it('gives known senders their /24s in turn and the flood the 127.64.0.0/10 range', () => {
    const known = knownAddress(3);
    expect([0, 1, 2, 3, 4].map(known)).toEqual(['127.10.1.1', '127.10.2.1', '127.10.3.1', '127.10.1.2', '127.10.2.2']);
    for (let i = 0; i < 1000; i++) {
      const [a, b, , d] = floodAddress().split('.').map(Number);
      expect(a).toBe(127);
      expect(b).toBeGreaterThanOrEqual(64);
      expect(b).toBeLessThan(128);
      expect(d).toBeGreaterThanOrEqual(1);
      expect(d).toBeLessThanOrEqual(254);
    }
    expect(network24('127.64.3.9')).toBe('127.64.3');
  });
});

describe('the figures', () => {
  const at = (s: number, ms: number, outcome: Attempt['outcome'] = 'accepted', stage: Attempt['stage'] = 'dot'): Attempt =>
    ({ at: s * 1000, ms, outcome, stage, code: outcome === 'accepted' ? 250 : outcome === 'deferred' ? 421 : null });
  const known = [at(0, 500), at(2, 10), at(2, 20), at(3, 30), { ...at(6, 100), greetMs: 2, dotMs: 90 }, { ...at(7, 400), greetMs: 300, dotMs: 50 }, at(7, 0, 'deferred', 'connect'), at(9, 5, 'failed', 'connect')];
  const flood = [at(5, 50), at(6, 3, 'deferred', 'connect'), at(6, 4, 'deferred', 'rcpt'), at(7, 1, 'rejected', 'rcpt'), at(8, 9, 'failed')];
  const f = summarize('ichidan on', known, flood, 7, { warmupEnd: 1000, floodStart: 5000, floodEnd: 9000 }, {
    listenDrops: 0, rssMb: 123, pssMb: 100, cpu: { server: 50, engine: null, generator: 5, others: 65, machine: 60 }, levels: 'overload@6s',
  });

  it('splits known senders before and during the flood, warm-up left out, and counts what was not accepted', () => {
    expect(f.knownBefore).toEqual({ n: 3, p50: 20, p99: 30 });
    expect(f.knownFlood).toEqual({ n: 2, p50: 400, p99: 400 });
    expect(f.knownFloodParts).toEqual({ greetP50: 300, greetP99: 300, dotP50: 90, dotP99: 90 });
    expect(f.knownRefused).toBe(2);
    expect(f.knownRefusedFlood).toBe(1);
    expect(f.unknown).toEqual({ offered: 12, accepted: 1, deferred: 2, deferredAtConnect: 1, rejected: 1, failed: 1, skipped: 7 });
  });

  it('tables the systems side by side and plots each second\'s slowest, carrying a second without any', () => {
    expect(perSecond(known, 9)).toEqual([500, 500, 20, 30, 30, 30, 100, 400, 400]);
    const t = table([f, { ...f, system: 'postfix' }]);
    expect(t).toMatch(/known p99 during \/ before\s+13\.33x\s+13\.33x/);
    expect(t).toContain('2 (1 at connect)');
    expect(levelStrip(['normal', 'busy', 'overload', null])).toBe('nbO?');
    const p = plot([{ system: 'ichidan on', values: perSecond(known, 9), levels: ['normal', 'busy', 'overload', 'overload', null] }, { system: 'postfix', values: [null, null, 5, 5, 5, 5, 5, 5, 5] }], 5, 9);
    expect(p).toContain('ichidan on: known senders');
    expect(p).toContain('postfix: known senders');
    expect(p).toContain('flood from 5 s to 9 s');
    expect(p).toMatch(/level {2}nbOO\?/);
  });
});
