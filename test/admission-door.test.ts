// Admission at the door against a running Ichidan, driven by a real signal: sessions held open by a
// known (trusted) client push the session share past the configured thresholds. Unknown senders
// come from their own 127.x.y.0/24 networks, known ones were learned in a normal phase first.
import { spawn, type ChildProcess } from 'node:child_process';
import { createServer, type Server, type Socket } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { baseConfig, parseConfig, startApp, waitUntil, type ConfigInput, type TestApp } from './helpers/app.js';
import { startDns } from './helpers/dns-server.js';
import { fakeClamd } from './helpers/fake-clamd.js';
import { RawSmtp } from './helpers/raw-smtp.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Levels that follow the sessions open on mx (maxClients 20): 6 busy, 10 overload. */
const pressure = { interval: '50ms', rise: '100ms', fall: '300ms', hysteresis: 0, sessions: { busy: 0.3, overload: 0.5 } };

function config(dir: string, admission: Record<string, unknown> = {}, extra: Partial<ConfigInput> = {}): ConfigInput {
  return baseConfig(dir, {
    listeners: [{ name: 'mx', role: 'mx', port: 0, maxClients: 20 }, { name: 'submission', role: 'submission', port: 0 }],
    trustedNetworks: ['127.0.0.1'],
    tenants: { alpha: { domains: ['alpha.test'] } },
    routes: { 'alpha.test': { hold: true } },
    limits: { client: { exceptions: [] } },
    admission: { pressure, busy: { greetingDelay: '800ms' }, senders: { minClean: 2, flushEvery: '50ms' }, ...admission } as never,
    ...extra,
  });
}

describe('admission at the door', () => {
  let t: TestApp | undefined;
  const open: RawSmtp[] = [];
  const servers: Server[] = [];
  const children: ChildProcess[] = [];
  afterEach(async () => {
    for (const c of children.splice(0)) c.kill('SIGKILL');
    for (const c of open.splice(0)) c.close();
    await t?.stop();
    t = undefined;
    for (const s of servers.splice(0)) s.close();
  });

  const connect = async (from: string) => {
    const c = await RawSmtp.open(t!.port('mx'), '127.0.0.1', from);
    open.push(c);
    return { c, greeting: (await c.reply()).join('\n') };
  };
  /** `n` idle sessions from the trusted (pinned) client. */
  const hold = async (n: number) => {
    const held: RawSmtp[] = [];
    for (let i = 0; i < n; i++) {
      const { c, greeting } = await connect('127.0.0.1');
      expect(greeting).toMatch(/^220 /);
      held.push(c);
    }
    return held;
  };
  const level = async () => /ichidan_admission_level (\d)/.exec(await t!.app.metrics.metrics())?.[1];
  const reachLevel = (want: 0 | 1 | 2) => waitUntil(async () => (await level()) === String(want), 10_000, `admission level ${want}`);
  /** One whole message from `from`; the reply to its final dot (or the first refusal on the way). */
  const send = async (from: string, rcpt = 'ann@alpha.test') => {
    const { c, greeting } = await connect(from);
    if (!greeting.startsWith('220')) return greeting;
    for (const line of ['EHLO client.test', 'MAIL FROM:<x@sender.test>', `RCPT TO:<${rcpt}>`, 'DATA']) {
      const reply = await c.command(line);
      if (!/^[23]/.test(reply)) return reply;
    }
    c.send('Subject: admission\r\n\r\nhello\r\n.\r\n');
    const reply = (await c.reply()).join('\n');
    c.close();
    return reply;
  };
  const refusedAtSocket = async () => t!.app.admissionStatus().knownQueues[0]?.refused ?? -1;
  const decisions = async (point: string, action: string, reason: string) => {
    const m = new RegExp(`ichidan_admission_decisions_total\\{point="${point}",action="${action}",reason="${reason}"\\} (\\d+)`).exec(await t!.app.metrics.metrics());
    return m ? Number(m[1]) : 0;
  };

  // The door itself (known senders' own accept queue off: its refusing thread would answer first; that is tested below).
  it('under overload refuses unknown senders at connect with 421 4.7.0, serves known ones, and lets everyone in again once the level falls', async () => {
    t = await startApp((dir) => config(dir, { knownQueue: false }));
    const held = await hold(10);
    await reachLevel(2);
    const refused = await connect('127.1.1.1');
    expect(refused.greeting).toMatch(/^421 4\.7\.0 /);
    await waitUntil(() => refused.c.closed, 2000, 'the refused connection to close');
    expect(await send('127.0.0.1')).toMatch(/^250 /);
    expect(await decisions('connect', 'refuse', 'overload')).toBe(1);
    for (const c of held) c.close();
    await reachLevel(0);
    expect(await send('127.1.1.1')).toMatch(/^250 /);
  });

  it('under overload defers at its next RCPT an unknown sender greeted before the level rose, and lets it on once the level falls', async () => {
    t = await startApp((dir) => config(dir, { knownQueue: false }));
    const { c, greeting } = await connect('127.1.2.1');
    expect(greeting).toMatch(/^220 /);
    expect(await c.command('EHLO early.test')).toMatch(/^250/);
    const held = await hold(10);
    await reachLevel(2);
    expect(await c.command('MAIL FROM:<x@early.test>')).toMatch(/^250 /);
    expect(await c.command('RCPT TO:<ann@alpha.test>')).toMatch(/^451 4\.7\.1 /);
    expect(await decisions('rcpt', 'refuse', 'overload')).toBe(1);
    expect(await send('127.0.0.1')).toMatch(/^250 /);
    for (const h of held) h.close();
    await reachLevel(0);
    expect(await c.command('RCPT TO:<ann@alpha.test>')).toMatch(/^250 /);
  });

  it('under overload defers after its final dot, instead of scanning it, a message whose RCPT an unknown sender gave before the level rose', async () => {
    t = await startApp((dir) => config(dir, { knownQueue: false }));
    const { c } = await connect('127.1.3.1');
    for (const line of ['EHLO early.test', 'MAIL FROM:<x@early.test>', 'RCPT TO:<ann@alpha.test>']) expect(await c.command(line)).toMatch(/^250/);
    expect(await c.command('DATA')).toMatch(/^354/);
    const held = await hold(10);
    await reachLevel(2);
    c.send('Subject: admission\r\n\r\nhello\r\n.\r\n');
    expect((await c.reply()).join('\n')).toMatch(/^451 4\.7\.1 /);
    expect(await decisions('data', 'refuse', 'overload')).toBe(1);
    expect(t.logs.some((l) => l.msg === 'deferred before its scan')).toBe(true);
    // A known sender's message is scanned and taken meanwhile.
    expect(await send('127.0.0.1')).toMatch(/^250 /);
    for (const h of held) h.close();
    await reachLevel(0);
    expect(await send('127.1.3.1')).toMatch(/^250 /);
  });

  it('under overload has the addon\'s thread answer unknown senders, counts them as the door\'s refusals, still gives a blocked network its 554, and lets everyone in once the level falls', async () => {
    t = await startApp((dir) => config(dir));
    await t.app.senders!.mark({ kind: 'network', key: '127.5.1.0/24' }, 'blocked', 'a test', 'test');
    const held = await hold(10);
    await reachLevel(2);
    await waitUntil(() => t!.app.admissionStatus().knownQueues[0]?.refusing === true, 3000, 'the refusing socket in the program');
    const greetings = await Promise.all(Array.from({ length: 20 }, async (_, i) => {
      const { c, greeting } = await connect(`127.9.${i}.1`);
      await waitUntil(() => c.closed, 5000, 'the refused connection to close');
      return greeting;
    }));
    expect(new Set(greetings)).toEqual(new Set(['421 4.7.0 server busy with other mail, try again later']));
    expect((await connect('127.5.1.9')).greeting).toMatch(/^554 5\.7\.1 /);
    expect(await send('127.0.0.1')).toMatch(/^250 /);
    await waitUntil(async () => (await decisions('connect', 'refuse', 'overload')) === 20, 3000, 'the socket\'s refusals counted as the door\'s');
    expect(await refusedAtSocket()).toBe(20);
    for (const c of held) c.close();
    await reachLevel(0);
    expect(t.app.admissionStatus().knownQueues[0]?.refusing).toBe(false);
    expect(await send('127.9.1.1')).toMatch(/^250 /);
  });

  it('meets a flood at the socket while the event loop is held: past knownQueueGuard the guard refuses everyone else from its thread, and the level follows', async () => {
    t = await startApp((dir) => config(dir, { knownQueueGuard: 8 }));
    expect(await level()).toBe('0');
    // A client process: 8 unknown senders' connections that wait in the general queue, then 5 more.
    const flood = spawn(process.execPath, ['-e', `
      const net = require('node:net');
      const dial = (from, ms) => new Promise((resolve) => {
        const c = net.connect({ host: '127.0.0.1', port: ${t.port('mx')}, localAddress: from });
        const timer = setTimeout(() => { resolve(''); }, ms);
        c.on('data', (d) => { clearTimeout(timer); resolve(d.toString().split('\\r\\n')[0]); c.destroy(); });
        c.on('error', (e) => { clearTimeout(timer); resolve('error ' + e.code); });
      });
      process.stdin.once('data', async () => {
        await Promise.all(Array.from({ length: 8 }, (_, i) => dial('127.20.' + i + '.1', 150)));
        const later = await Promise.all(Array.from({ length: 5 }, (_, i) => dial('127.21.' + i + '.1', 800)));
        process.stdout.write(JSON.stringify(later));
        process.exit(0);
      });
      process.stdout.write('ready\\n');
    `], { stdio: ['pipe', 'pipe', 'inherit'] });
    children.push(flood);
    let out = '';
    flood.stdout.on('data', (d) => { out += String(d); });
    await new Promise<void>((resolve) => flood.stdout.once('data', () => resolve()));
    const done = new Promise<void>((resolve) => flood.on('exit', () => resolve()));
    flood.stdin.write('go\n');
    // The event loop is held (a flood's first connections keep it so): nothing in Node accepts or reads a timer.
    const until = Date.now() + 1800;
    while (Date.now() < until) { /* held */ }
    await done;
    expect(JSON.parse(out.replace(/^ready\n/, ''))).toEqual(Array(5).fill('421 4.7.0 server busy with other mail, try again later'));
    // Node takes the surge in as the pressure's own: overload, with the refusing thread kept on.
    await reachLevel(2);
    expect(t.app.admissionStatus().knownQueues[0]).toMatchObject({ refusing: true, surges: 1 });
    const entered = t.logs.find((l) => l.level === 'overload');
    expect(entered?.why).toMatch(/^acceptQueue=\d+ ≥ 8 \(the known queue's guard on mx\)$/);
    expect((entered?.signals as { acceptQueue: number }).acceptQueue).toBeGreaterThanOrEqual(8);
    expect(/ichidan_admission_known_queue_surges_total\{listener="mx"\} (\d+)/.exec(await t.app.metrics.metrics())?.[1]).toBe('1');
    expect(t.logs.some((l) => l.listener === 'mx' && typeof l.msg === 'string' && l.msg.startsWith('the known queue\'s guard met a flood on mx'))).toBe(true);
    // Known senders are still served.
    expect(await send('127.0.0.1')).toMatch(/^250 /);
  });

  it('refuses at the socket, before any per-connection work: no reverse lookup for a refused client, and its 421 comes at once', async () => {
    const dns = await startDns({ '1.0.0.127.in-addr.arpa': { ptr: ['held.ptr.test'] } });
    try {
      t = await startApp((dir) => config(dir, { knownQueue: false }, { dns: { servers: [dns.server], reverseLookup: true } } as Partial<ConfigInput>));
      await hold(10);
      await reachLevel(2);
      expect(dns.queries.some((q) => q.name === '1.0.0.127.in-addr.arpa')).toBe(true); // the lookup is on for those greeted
      const t0 = Date.now();
      const refused = await connect('127.1.1.9');
      expect(refused.greeting).toBe('421 4.7.0 server busy with other mail, try again later');
      expect(Date.now() - t0).toBeLessThan(1000);
      await waitUntil(() => refused.c.closed, 2000, 'the refused connection to close');
      expect(dns.queries.filter((q) => q.name === '9.1.1.127.in-addr.arpa')).toEqual([]);
      expect(await decisions('connect', 'refuse', 'overload')).toBe(1);
      // The known client is still greeted on the same listener after the refusal.
      expect((await connect('127.0.0.1')).greeting).toMatch(/^220 /);
    } finally {
      for (const c of open.splice(0)) c.close();
      await t?.stop();
      t = undefined;
      await dns.close();
    }
  });

  it('learns senders in normal times: under overload a learned network is greeted and served, an unknown one deferred', async () => {
    t = await startApp((dir) => config(dir));
    // Normal phase: two clean messages from 127.2.1.0/24 make it known (senders.minClean 2).
    expect(await send('127.2.1.1')).toMatch(/^250 /);
    expect(await send('127.2.1.2')).toMatch(/^250 /);
    await sleep(300);
    await hold(10);
    await reachLevel(2);
    // A flood of unknown senders from many networks: every one deferred, none let in.
    for (let i = 0; i < 12; i++) expect((await connect(`127.3.${i}.9`)).greeting).toMatch(/^421 4\.7\.0 /);
    // Another address of the learned network is known too, and its mail is taken.
    expect(await send('127.2.1.200')).toMatch(/^250 /);
  });

  it('while busy delays unknown senders\' greeting, refuses one that talks first, and limits each unknown network', async () => {
    t = await startApp((dir) => config(dir, { busy: { greetingDelay: '800ms', maxConnections: 2 } }));
    await hold(7);
    await reachLevel(1);
    const started = Date.now();
    const slow = await connect('127.4.1.1');
    expect(slow.greeting).toMatch(/^220 /);
    expect(Date.now() - started).toBeGreaterThanOrEqual(700);
    // Known senders are greeted at once.
    const t0 = Date.now();
    const known = await connect('127.0.0.1');
    expect(known.greeting).toMatch(/^220 /);
    expect(Date.now() - t0).toBeLessThan(700);
    // (Closed again: the sessions stay below the overload threshold of 10.)
    known.c.close();
    // A client that sends before the greeting (pregreet) is refused.
    const eager = await RawSmtp.open(t.port('mx'), '127.0.0.1', '127.4.2.1');
    open.push(eager);
    eager.send('EHLO eager.test\r\n');
    expect((await eager.reply()).join('\n')).toMatch(/^421 .*talk too soon/);
    await waitUntil(() => eager.closed && known.c.closed, 2000, 'the eager and known clients to be gone');
    await sleep(100);
    // 127.4.1.0/24 has one session open: one more is allowed, a third is not.
    expect((await connect('127.4.1.2')).greeting).toMatch(/^220 /);
    expect((await connect('127.4.1.3')).greeting).toMatch(/^421 4\.7\.0 .*busy/);
    expect(await decisions('connect', 'refuse', 'busy_connections')).toBe(1);
  });

  it('with overload.refuse: rcpt greets unknown senders and defers them at RCPT with 451 4.7.1', async () => {
    t = await startApp((dir) => config(dir, { overload: { refuse: 'rcpt' } }));
    await hold(10);
    await reachLevel(2);
    expect(await send('127.5.1.1')).toMatch(/^451 4\.7\.1 /);
    expect(await send('127.0.0.1')).toMatch(/^250 /);
    expect(await decisions('rcpt', 'refuse', 'overload')).toBe(1);
  });

  it('never gives unknown senders the sessions reserved for known ones', async () => {
    // No level change here: the reserve holds at every level (thresholds out of reach).
    t = await startApp((dir) => config(dir, { pressure: { ...pressure, sessions: { busy: 1, overload: 1 } }, reserve: { sessions: 0.25 } }));
    for (let i = 0; i < 15; i++) expect((await connect(`127.6.${i}.1`)).greeting).toMatch(/^220 /);
    expect((await connect('127.6.99.1')).greeting).toMatch(/^421 4\.7\.0 /);
    // The last five of twenty are the known senders'.
    await hold(5);
    expect(await decisions('connect', 'refuse', 'reserve')).toBe(1);
  });

  it('observe mode counts what it would do and refuses nobody', async () => {
    t = await startApp((dir) => config(dir, { mode: 'observe' }));
    await hold(10);
    await reachLevel(2);
    expect(await send('127.7.1.1')).toMatch(/^250 /);
    expect(await decisions('connect', 'greet', 'would_overload')).toBe(1);
  });

  it('pauses the queue\'s intake for everyone while memory is short, and takes mail again after', async () => {
    // Memory available is always under 99.9% of the total: the floor is at overload from the start.
    t = await startApp((dir) => config(dir, { pressure: { ...pressure, memoryFree: { busy: 0.999, overload: 0.999 } } }));
    await reachLevel(2);
    expect(await send('127.0.0.1')).toMatch(/^452 4\.3\.1 /);
    expect(await decisions('mail', 'refuse', 'intake_paused')).toBe(1);
  });

  it('keeps scan slots for known senders: their message is scanned while unknown ones wait for theirs', async () => {
    // A clamd that takes 1 s per message; two slots, one of them reserved.
    const slow = createServer((s: Socket) => {
      const end = s.end.bind(s) as (...a: unknown[]) => Socket;
      (s as unknown as { end: (...a: unknown[]) => Socket }).end = (...a: unknown[]) => {
        setTimeout(() => end(...a), 1000);
        return s;
      };
      fakeClamd(s, 'clean');
    });
    servers.push(slow);
    await new Promise<void>((r) => slow.listen(0, '127.0.0.1', r));
    const port = (slow.address() as { port: number }).port;
    t = await startApp((dir) => config(dir, { scans: 2, reserve: { scans: 0.5 }, pressure: { ...pressure, sessions: { busy: 1, overload: 1 } } }, {
      engines: [{ name: 'clamav', type: 'clamd', servers: [{ host: '127.0.0.1', port }], timeout: '10s' }],
    }));
    const done: string[] = [];
    const unknown = [1, 2, 3].map((i) => send(`127.8.${i}.1`).then((r) => { done.push(`unknown${i}`); return r; }));
    await sleep(300);
    const known = send('127.0.0.1').then((r) => { done.push('known'); return r; });
    expect(await known).toMatch(/^250 /);
    for (const r of await Promise.all(unknown)) expect(r).toMatch(/^250 /);
    // The known message (sent last) finished second: only the first unknown one was scanned before it.
    expect(done.indexOf('known')).toBeLessThanOrEqual(1);
  });

  it('hands an engine only as many unknown senders\' messages as it takes without a queue, so a known sender\'s does not wait inside it behind a flood\'s', async () => {
    // A clamd with one worker: 150 ms a message, one after another, however many it is sent at once.
    let turn = Promise.resolve();
    let inEngine = 0;
    let most = 0;
    const oneWorker = createServer((s: Socket) => {
      inEngine++;
      most = Math.max(most, inEngine);
      const end = s.end.bind(s) as (...a: unknown[]) => Socket;
      (s as unknown as { end: (...a: unknown[]) => Socket }).end = (...a: unknown[]) => {
        turn = turn.then(() => sleep(150)).then(() => { inEngine--; end(...a); });
        return s;
      };
      fakeClamd(s, 'clean');
    });
    servers.push(oneWorker);
    await new Promise<void>((r) => oneWorker.listen(0, '127.0.0.1', r));
    const port = (oneWorker.address() as { port: number }).port;
    const settings = (tolerance: number) => ({
      unknownScans: { floor: 1, tolerance },
      pressure: { ...pressure, sessions: { busy: 1, overload: 1 }, scanWait: { busy: '1m', overload: '2m' } },
    });
    const extra = { engines: [{ name: 'clamav', type: 'clamd' as const, servers: [{ host: '127.0.0.1', port }], timeout: '10s' }] };
    t = await startApp((dir) => config(dir, settings(2), extra));
    /**
     * Six unknown senders' messages at once, then, once `ahead` of them are in the engine, a known
     * sender's: the order their replies came in, and the most the engine held at once.
     */
    const round = async (net: number, ahead: number) => {
      most = 0;
      const done: string[] = [];
      const unknown = [1, 2, 3, 4, 5, 6].map((i) => send(`127.9.${net + i}.1`).then((r) => { done.push(`unknown${i}`); return r; }));
      await waitUntil(() => inEngine >= ahead, 10_000, `${ahead} unknown senders' messages in the engine`);
      const known = send('127.0.0.1').then((r) => { done.push('known'); return r; });
      for (const r of [await known, ...await Promise.all(unknown)]) expect(r).toMatch(/^250 /);
      return { known: done.indexOf('known'), most };
    };
    // The limit starts at its floor (1); the first scan teaches the engine's speed (150 ms), and each
    // later one within twice that raises it by one: the known message, sent while the first unknown
    // one was in the engine, is among the first three answered, and the engine never holds more than four.
    const limited = await round(0, 1);
    expect(limited.known).toBeLessThanOrEqual(2);
    expect(limited.most).toBeLessThanOrEqual(4);
    expect(t.app.admissionStatus().scans.unknown.quickestMs).toBeGreaterThanOrEqual(140);
    // tolerance 0 (reloaded): every unreserved slot is theirs, the engine gets all six at once, and
    // the known message, sent last, waits inside it behind them.
    t.app.reconfigure(parseConfig(config(t.dataDir, settings(0), extra), 'test'));
    const unlimited = await round(10, 6);
    expect(unlimited.most).toBe(7);
    expect(unlimited.known).toBe(6);
  });
  it('gives known senders an accept queue of their own: trusted and learned networks are steered to it, and a reload that turns it off steers none', async () => {
    t = await startApp((dir) => config(dir));
    const metric = async (name: string) => Number(new RegExp(`${name}\\{listener="mx"\\} (\\d+)`).exec(await t!.app.metrics.metrics())?.[1] ?? -1);
    const taken = () => metric('ichidan_admission_known_queue_connections_total');
    const networks = () => metric('ichidan_admission_known_queue_networks');
    expect(await networks()).toBe(1); // trustedNetworks: 127.0.0.1
    expect(await send('127.0.0.1')).toMatch(/^250 /);
    expect(await taken()).toBe(1);
    // 127.3.1.0/24 sends clean mail (minClean 2) through the general queue until it is known.
    expect(await send('127.3.1.1')).toMatch(/^250 /);
    expect(await send('127.3.1.2')).toMatch(/^250 /);
    expect(await taken()).toBe(1);
    await waitUntil(async () => (await networks()) === 2, 5000, 'the learned network to be steered');
    expect(await send('127.3.1.3')).toMatch(/^250 /);
    expect(await send('127.4.1.1')).toMatch(/^250 /);
    expect(await taken()).toBe(2);
    expect(t.app.admissionStatus().knownQueues).toEqual([{ listener: 'mx', networks: 2, left: 0, accepted: 2, refusing: false, refused: 0, surges: 0 }]);
    // The submission listener is no admission listener: it has none.
    t.app.reconfigure(parseConfig(config(t.dataDir, { knownQueue: false }), 'test'));
    await waitUntil(async () => (await networks()) === 0, 5000, 'no network steered');
    expect(await send('127.0.0.1')).toMatch(/^250 /);
    expect(await send('127.3.1.4')).toMatch(/^250 /);
    expect(await taken()).toBe(2);
  });
});
