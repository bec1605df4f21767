/*
 * The transparent proxy against real netfilter, end to end. A client namespace plays the legacy
 * MTAs (smtp-source; swaks with pipelining; three MSA addresses) and sends to 203.0.113.25:25, an
 * address that exists only in the server namespace, over a veth whose traffic to port 25 an
 * iptables REDIRECT sends to Ichidan's proxy listener (the built CLI, port 10025). Ichidan reads
 * the original destination from the kernel and relays to the real SMTP server bound there
 * (test/helpers/netns-sink.ts). Also: destinations that drop the connection mid-DATA (a small
 * message, and one larger than the socket buffers), a connection dialled straight to the proxy, a
 * redirect that points the proxy at itself, and the per-site connection cap
 * (`delivery.site.maxConnections: 2`: a proxied destination no route names is the site
 * `addr:<address>:<port>`) with three source MSAs sending at once, and its turns given back when a
 * client leaves while it waits for one.
 *
 * Needs root, iproute2 and iptables (CI must have them: test/helpers/netns.ts), the addon built by
 * `npm install`, dist/ built by tsc, smtp-source (Debian's postfix) and swaks.
 */
import type { ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { get } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { canUseNetns, canUseOriginalDst, NetnsLab } from './helpers/netns.js';
import { readTranscriptTables } from './helpers/records.js';

const DIST = join(import.meta.dirname, '..', 'dist');
const CLI = join(DIST, 'mta', 'mta-main.js');
const SINK_SCRIPT = join(DIST, 'test', 'helpers', 'netns-sink.js');

const DESTINATION = '203.0.113.25';
// Each its own site: a dropped connection pauses the (site, source) pair it happened on.
const DROPPING = { small: '203.0.113.26', large: '203.0.113.27' };
// Where the clients that leave early send, so that a turn they fail to give back blocks no other test.
const SECOND_DESTINATION = '203.0.113.28';
const PROXY_PORT = 10025;
const SERVER_ADDRESS = '192.0.2.1';
const CLIENT_ADDRESS = '192.0.2.2';
const MSAS = { msa1: '192.0.2.11', msa2: '192.0.2.12', msa3: '192.0.2.13' };
const SITE_CAP = 2;
// Every reply of the sink is this late, so that sessions overlap and the cap is really pressed.
const SINK_REPLY_DELAY_MS = 25;
// The sink's answer at the end of DATA: a client that sees it heard the destination itself.
const SINK_FINAL = '250 2.6.0 Ok: sunk';

/** Answers like a destination on every address given until the data starts arriving, then drops the connection. */
const DROPPER = `
const net = require('node:net');
const [port, ...hosts] = process.argv.slice(1);
const report = (line) => console.log(JSON.stringify(line));
let listening = 0;
const server = (host) => net.createServer((socket) => {
  let inData = false;
  socket.write('220 drop.test ESMTP\\r\\n');
  socket.on('data', (chunk) => {
    if (inData) {
      report({ event: 'dropped', host, bytes: chunk.length });
      return socket.destroy();
    }
    for (const line of chunk.toString('latin1').split('\\r\\n').filter(Boolean)) {
      if (/^EHLO/i.test(line)) socket.write('250-drop.test\\r\\n250 PIPELINING\\r\\n');
      else if (/^DATA/i.test(line)) { inData = true; socket.write('354 go ahead\\r\\n'); }
      else socket.write('250 ok\\r\\n');
    }
  });
  socket.on('error', () => undefined);
}).listen(Number(port), host, () => { if (++listening === hosts.length) report({ event: 'listening' }); });
hosts.forEach(server);
`;

/**
 * Two sessions take both turns at the site (up to RCPT), a third asks for one and leaves while it
 * waits, then the two quit: every turn should be back. Prints the replies the two got.
 */
const LEAVER = `
const net = require('node:net');
const host = process.argv[1];
function session() {
  const socket = net.connect(25, host);
  const replies = [];
  const waiting = [];
  let buffer = '';
  socket.on('data', (chunk) => {
    buffer += chunk;
    let end;
    while ((end = buffer.indexOf('\\r\\n')) >= 0) {
      const line = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      if (!/^\\d{3} /.test(line)) continue;
      if (waiting.length > 0) waiting.shift()(line);
      else replies.push(line);
    }
  });
  socket.on('error', () => undefined);
  const reply = () => (replies.length > 0 ? Promise.resolve(replies.shift()) : new Promise((resolve) => waiting.push(resolve)));
  const say = (line) => { socket.write(line + '\\r\\n'); return reply(); };
  return { socket, reply, say };
}
async function upToMail(s, name) {
  await s.reply();
  await s.say('EHLO legacy.test');
  await s.say('MAIL FROM:<' + name + '@legacy.test>');
}
(async () => {
  const answers = [];
  const holders = [session(), session()];
  for (const [i, holder] of holders.entries()) {
    await upToMail(holder, 'holder' + i);
    answers.push(await holder.say('RCPT TO:<x@dest.test>'));
  }
  const leaver = session();
  await upToMail(leaver, 'leaver');
  leaver.socket.write('RCPT TO:<x@dest.test>\\r\\n');
  await new Promise((resolve) => setTimeout(resolve, 500));
  leaver.socket.destroy();
  for (const holder of holders) answers.push(await holder.say('QUIT'));
  console.log(JSON.stringify(answers));
})();
`;

const netns = canUseNetns();
const support = netns.ok ? canUseOriginalDst() : netns;

interface Report {
  event: string;
  [key: string]: unknown;
}

/** The JSON lines a child prints, and a wait for the first one that matches. */
class Reports {
  readonly events: Report[] = [];
  readonly #waiters: Array<() => void> = [];

  constructor(readonly name: string, child: ChildProcess) {
    createInterface({ input: child.stdout! }).on('line', (line) => {
      this.events.push(JSON.parse(line) as Report);
      for (const wake of this.#waiters.splice(0)) wake();
    });
  }

  next(match: (e: Report) => boolean, what: string, after = 0, timeoutMs = 10_000): Promise<Report> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`${this.name} reported no ${what}; it said: ${JSON.stringify(this.events.slice(-5))}`)), timeoutMs);
      const look = (): void => {
        const found = this.events.slice(after).find(match);
        if (!found) return void this.#waiters.push(look);
        clearTimeout(timer);
        resolve(found);
      };
      look();
    });
  }
}

describe.skipIf(!support.ok)(`transparent proxy against real netfilter${support.ok ? '' : ` (skipped: ${support.reason})`}`, () => {
  const lab = new NetnsLab();
  let client: string;
  let dataDir: string;
  let sink: ChildProcess;
  let sinkReports: Reports;
  let dropperReports: Reports;
  const ichidanLog: string[] = [];

  /** Starts a node script inside `ns` and waits for its `ready` report (or fails when it exits first). */
  async function startReporting(ns: string, name: string, args: string[], ready: string): Promise<{ child: ChildProcess; reports: Reports }> {
    const child = lab.spawn(ns, process.execPath, args, { stdio: ['pipe', 'pipe', 'pipe'] });
    let stderr = '';
    child.stderr!.on('data', (chunk) => { stderr += chunk; });
    const reports = new Reports(name, child);
    const exited = new Promise<never>((_, reject) => {
      child.once('exit', (code) => reject(new Error(`${name} exited (${code}) before it was ready: ${stderr}`)));
    });
    await Promise.race([reports.next((e) => e.event === ready, ready), exited]);
    return { child, reports };
  }

  async function startIchidan(ns: string): Promise<void> {
    const config = {
      hostname: 'proxy.ichidan.test',
      dataDir,
      log: { level: 'info' },
      listeners: [{ name: 'proxy', role: 'proxy', address: '0.0.0.0', port: PROXY_PORT, tls: 'none' }],
      trustedNetworks: ['192.0.2.0/24'],
      tenants: Object.fromEntries(Object.entries(MSAS).map(([name, address]) => [name, { networks: [`${address}/32`] }])),
      queue: { fsync: false },
      delivery: { mtaSts: { enabled: false }, site: { maxConnections: SITE_CAP, initialConnections: SITE_CAP } },
      proxy: { slotWait: '30s' },
    };
    const file = join(dataDir, 'config.yaml');
    // JSON is YAML.
    await writeFile(file, JSON.stringify(config, null, 2));
    const child = lab.spawn(ns, process.execPath, [CLI, 'start', '-c', file], {
      stdio: ['ignore', 'pipe', 'pipe', 'pipe'],
      env: { ...process.env, ICHIDAN_READY_FD: '3' },
    });
    for (const stream of [child.stdout!, child.stderr!]) createInterface({ input: stream }).on('line', (line) => ichidanLog.push(line));
    const ready = await new Promise<{ listeners: Array<{ name: string; port: number }> }>((resolve, reject) => {
      createInterface({ input: child.stdio[3] as NodeJS.ReadableStream }).once('line', (line) => resolve(JSON.parse(line)));
      child.once('exit', (code) => reject(new Error(`Ichidan exited (${code}) before it was ready:\n${ichidanLog.join('\n')}`)));
    });
    if (!ready.listeners.some((l) => l.name === 'proxy' && l.port === PROXY_PORT)) {
      throw new Error(`Ichidan started without its proxy listener:\n${ichidanLog.join('\n')}`);
    }
  }

  async function swaks(args: string[], timeoutMs = 30_000): Promise<string> {
    const run = await lab.run(client, 'swaks', ['--helo', 'legacy.test', '--hide-informational', ...args], timeoutMs);
    return run.stdout + run.stderr;
  }

  /** The sink's connection statistics now (every message it has accepted is reported before them). */
  async function sinkStats(): Promise<Report> {
    const after = sinkReports.events.length;
    sink.stdin!.write('stats\n');
    return sinkReports.next((e) => e.event === 'stats', 'statistics', after);
  }

  /** The turns taken at a site now, from the running process's admin API. */
  function turnsTaken(site: string): Promise<number> {
    return new Promise((resolve, reject) => {
      get({ socketPath: join(dataDir, 'admin.sock'), path: '/v1/egress' }, (res) => {
        let body = '';
        res.on('data', (chunk) => { body += chunk; });
        res.on('end', () => {
          const pairs = (JSON.parse(body) as { pairs: Array<{ site: string; active: number }> }).pairs;
          resolve(pairs.filter((p) => p.site === site).reduce((n, p) => n + p.active, 0));
        });
      }).on('error', reject);
    });
  }

  function sunkFrom(sender: (from: string) => boolean): Report[] {
    return sinkReports.events.filter((e) => e.event === 'message' && sender(e.mailFrom as string));
  }

  async function waitForSunk(sender: (from: string) => boolean, count: number): Promise<Report[]> {
    const until = Date.now() + 20_000;
    while (sunkFrom(sender).length < count && Date.now() < until) await new Promise((r) => setTimeout(r, 50));
    return sunkFrom(sender);
  }

  /**
   * The proxied transactions whose MAIL FROM named `sender`, each with the destination session that
   * carried it and its tenant, once that many are stored: transcripts are written without holding
   * the relay up, so they land a moment later. (A destination session may carry the transactions
   * of several client connections in turn.)
   */
  async function transcriptsOf(sender: string, count: number): Promise<Array<{ address: string; port: number; tenant: string }>> {
    const until = Date.now() + 10_000;
    for (;;) {
      const { connections, links, commands } = readTranscriptTables(dataDir);
      const sent = new Set(commands.filter((l) => l.dir === 'client' && l.queue_id !== null && l.text.startsWith(`MAIL FROM:<${sender}>`)).map((l) => l.queue_id));
      const rows = links.filter((l) => sent.has(l.queue_id)).map((l) => {
        const c = connections.find((s) => s.id === l.connection_id)!;
        return { address: c.address, port: c.port, tenant: l.tenant };
      });
      if (rows.length >= count || Date.now() > until) return rows;
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  beforeAll(async () => {
    for (const file of [CLI, SINK_SCRIPT]) {
      if (!existsSync(file)) throw new Error(`${file} is missing: build with "npx tsc -p tsconfig.json" first`);
    }
    dataDir = await mkdtemp(join(tmpdir(), 'ichidan-proxy-netns-'));
    const server = lab.namespace('proxy');
    client = lab.namespace('legacy');
    lab.veth(
      { ns: server, name: 'to-legacy', addresses: [`${SERVER_ADDRESS}/24`] },
      { ns: client, name: 'to-proxy', addresses: [`${CLIENT_ADDRESS}/24`, ...Object.values(MSAS).map((a) => `${a}/24`)] },
    );
    lab.route(client, 'default', SERVER_ADDRESS);
    for (const address of [DESTINATION, DROPPING.small, DROPPING.large, SECOND_DESTINATION]) lab.address(server, 'lo', `${address}/32`);
    const fromClient = { family: 4 as const, inInterface: 'to-legacy', destination: '203.0.113.0/24' };
    lab.redirect(server, { ...fromClient, port: 25 }, PROXY_PORT);
    // Port 10025 of a destination redirected to the proxy: the destination is the proxy itself.
    lab.redirect(server, { ...fromClient, port: PROXY_PORT }, PROXY_PORT);

    ({ child: sink, reports: sinkReports } = await startReporting(server, 'the sink', [SINK_SCRIPT, DESTINATION, '25', String(SINK_REPLY_DELAY_MS)], 'listening'));
    await startReporting(server, 'the second sink', [SINK_SCRIPT, SECOND_DESTINATION, '25'], 'listening');
    ({ reports: dropperReports } = await startReporting(server, 'the dropping destination', ['-e', DROPPER, '25', DROPPING.small, DROPPING.large], 'listening'));
    await startIchidan(server);
  });

  afterAll(async () => {
    try {
      await lab.cleanup();
    } finally {
      if (dataDir) await rm(dataDir, { recursive: true, force: true });
    }
  });

  it('relays smtp-source\'s sessions to 203.0.113.25:25: every message arrives, each answered with the destination\'s own 250, each transaction in a transcript naming 203.0.113.25:25', async () => {
    const messages = 50;
    const run = await lab.run(client, 'smtp-source', ['-v', '-m', String(messages), '-s', '5', '-l', '2048', '-c', '-f', 'a@legacy.test', '-t', 'x@dest.test', `${DESTINATION}:25`], 60_000);
    // smtp-source stops at the first reply it did not expect, and -v logs every reply on stderr.
    expect(run.code, run.stderr.slice(-2000)).toBe(0);
    const replies = run.stderr.split('\n').filter((l) => l.includes('<<< '));
    const greetings = replies.filter((l) => l.includes('<<< 220 '));
    expect(greetings).toHaveLength(messages);
    expect(greetings.every((l) => l.endsWith('Ichidan proxy'))).toBe(true);
    expect(replies.filter((l) => l.endsWith(`<<< ${SINK_FINAL}`))).toHaveLength(messages);

    const sunk = await waitForSunk((from) => from === 'a@legacy.test', messages);
    expect(sunk).toHaveLength(messages);
    expect(sunk.every((m) => (m.rcptTo as string[]).join() === 'x@dest.test' && (m.bytes as number) > 2048)).toBe(true);
    // Through the proxy, not past it: the sink saw the proxy's address, never the legacy client's.
    expect(sunk.some((m) => m.clientAddress === CLIENT_ADDRESS)).toBe(false);

    // Every transaction is in a transcript of a session to the destination it was addressed to.
    const sessions = await transcriptsOf('a@legacy.test', messages);
    expect(sessions).toHaveLength(messages);
    expect(new Set(sessions.map((s) => `${s.address}:${s.port}`))).toEqual(new Set([`${DESTINATION}:25`]));
  });

  it('relays swaks\'s pipelined transaction, MAIL, RCPT and DATA sent together', async () => {
    const out = await swaks(['--server', `${DESTINATION}:25`, '--pipeline', '--from', 'p@legacy.test', '--to', 'y@dest.test']);
    expect(out).toMatch(/ -> MAIL FROM:<p@legacy\.test>\n -> RCPT TO:<y@dest\.test>\n -> DATA\n<-  250 /);
    expect(out).toContain(`<-  ${SINK_FINAL}`);
    expect(await waitForSunk((from) => from === 'p@legacy.test', 1)).toHaveLength(1);
    const sessions = await transcriptsOf('p@legacy.test', 1);
    expect(sessions.map((s) => `${s.address}:${s.port}`)).toEqual([`${DESTINATION}:25`]);
  });

  it('refuses a connection dialled straight to the proxy port, and one redirected to the proxy itself, with 554 5.4.6', async () => {
    const direct = await swaks(['--server', `${SERVER_ADDRESS}:${PROXY_PORT}`, '--from', 'd@legacy.test', '--to', 'y@dest.test']);
    expect(direct).toMatch(/<\*\* 554 5\.4\.6 no original destination/);
    const loop = await swaks(['--server', `${DESTINATION}:${PROXY_PORT}`, '--from', 'd@legacy.test', '--to', 'y@dest.test']);
    expect(loop).toMatch(new RegExp(`<\\*\\* 554 5\\.4\\.6 routing loop: ${DESTINATION.replaceAll('.', '\\.')}:${PROXY_PORT} is this MTA`));
    expect(sunkFrom((from) => from === 'd@legacy.test')).toHaveLength(0);
  });

  /** swaks's transcript of a message to a dropping destination, and what that destination saw. */
  async function dropped(host: string, extra: string[], timeoutMs?: number): Promise<{ out: string; bytes: number }> {
    const after = dropperReports.events.length;
    const out = await swaks(['--server', `${host}:25`, '--from', 'e@legacy.test', '--to', 'y@dest.test', ...extra], timeoutMs);
    const report = await dropperReports.next((e) => e.event === 'dropped' && e.host === host, `dropped connection on ${host}`, after);
    return { out, bytes: report.bytes as number };
  }

  const failedAt = (host: string) => new RegExp(`<\\*\\* 451 4\\.4\\.2 destination failed: ${host.replaceAll('.', '\\.')}:25: `);

  it('gives the client a 4xx when the destination drops the connection mid-DATA', async () => {
    const { out, bytes } = await dropped(DROPPING.small, []);
    expect(bytes).toBeGreaterThan(0);
    expect(out).toMatch(failedAt(DROPPING.small));
  });

  it('gives the client a 4xx when the destination drops the connection while a message larger than the socket buffers is still being relayed', async () => {
    const body = join(dataDir, 'large-body.txt');
    await writeFile(body, 'a line of a large message, long enough to fill the socket buffers many times over\r\n'.repeat(50_000));
    // A proxy that never answers fails the test in 15 s, when swaks is ended.
    const { out, bytes } = await dropped(DROPPING.large, ['--body', `@${body}`, '--suppress-data', '--timeout', '5'], 15_000);
    expect(bytes).toBeGreaterThan(0);
    expect(out, 'the end of the data must get a reply, the destination having dropped').toMatch(failedAt(DROPPING.large));
  });

  it(`keeps the site within ${SITE_CAP} connections while three source MSAs each send several sessions at once, and all their mail arrives`, async () => {
    const perMsa = 4;
    const sends = Object.entries(MSAS).flatMap(([name, address]) => Array.from({ length: perMsa }, (_, i) => {
      const from = `${name}-${i}@legacy.test`;
      return swaks(['--server', `${DESTINATION}:25`, '--local-interface', address, '--pipeline', '--from', from, '--to', `${name}@dest.test`]);
    }));
    const outs = await Promise.all(sends);
    for (const out of outs) expect(out).toContain(`<-  ${SINK_FINAL}`);
    const fromMsa = (from: string) => /^msa\d-\d@legacy\.test$/.test(from);
    expect(await waitForSunk(fromMsa, outs.length)).toHaveLength(outs.length);

    // The peak over every session this file sent to the sink: all of them went through the cap.
    const stats = await sinkStats();
    expect(stats.peakConnections).toBeLessThanOrEqual(SITE_CAP);
    // Each MSA was its own tenant, all three sharing the one site.
    const tenants = await Promise.all(Object.keys(MSAS).map(async (name) => (await transcriptsOf(`${name}-0@legacy.test`, 1)).map((s) => s.tenant)));
    expect(tenants).toEqual(Object.keys(MSAS).map((name) => [name]));
  });

  it('gives a turn back when its client leaves while waiting for it: the site\'s turns are all free once every client has gone', async () => {
    const run = await lab.run(client, process.execPath, ['-e', LEAVER, SECOND_DESTINATION], 30_000);
    expect(run.code, run.stderr).toBe(0);
    const replies = JSON.parse(run.stdout) as string[];
    expect(replies.map((r) => r.slice(0, 3))).toEqual(['250', '250', '221', '221']);
    const site = `addr:${SECOND_DESTINATION}:25`;
    const until = Date.now() + 5_000;
    let inFlight = await turnsTaken(site);
    while (inFlight > 0 && Date.now() < until) {
      await new Promise((r) => setTimeout(r, 100));
      inFlight = await turnsTaken(site);
    }
    expect(inFlight, `turns still taken at ${site} after every client left`).toBe(0);
  });
});
