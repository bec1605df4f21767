/*
 * Steering by DNS end to end, with real peers in network namespaces. Ichidan (its DNS responder
 * at 10.53.0.53, its mx listeners at the primary host 10.53.0.10 and the overflow host
 * 10.53.0.20, and two pairing addresses) runs in one namespace; each of two sender namespaces
 * holds a real `unbound` (a stub zone for example.test pointing at Ichidan's responder) and a real
 * Postfix whose SMTP client resolves the MX through that unbound and delivers to Ichidan.
 *
 *   normal      both senders' mail arrives at the primary host, at the pairing address handed
 *               to their resolver, and each resolver is paired with its Postfix
 *   high load   (this node overloaded) the resolver on the known list still gets the primary
 *               host; the other one gets the overflow host, and Postfix delivers there
 * dig through unbound and straight to the responder shows the same answers.
 *
 * Needs root, iproute2 (test/helpers/netns.ts), unbound, dig and Postfix (test/helpers/dns-peers.ts);
 * in CI a missing one fails the run. dist/ built by tsc (the Ichidan process runs from it).
 */
import type { ChildProcess } from 'node:child_process';
import { mkdirSync, rmSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startPostfix, type PostfixInstance } from '../bench/bench-postfix.js';
import { dnsPeersSupport, TOOLS } from './helpers/dns-peers.js';
import { canUseNetns, NetnsLab } from './helpers/netns.js';

const HARNESS = join(import.meta.dirname, '..', 'dist', 'test', 'helpers', 'dns-world-node.js');
const RESPONDER = '10.53.0.53';
const PRIMARY = '10.53.0.10';
const OVERFLOW = '10.53.0.20';
const PAIRING = ['10.53.0.41', '10.53.0.42'];

/** A sender namespace: its Postfix sends from `mta`, its unbound asks from `resolver`. */
const SENDERS = {
  known: { subnet: 1, mta: '10.53.1.2', resolver: '10.53.1.3' },
  stranger: { subnet: 2, mta: '10.53.2.2', resolver: '10.53.2.3' },
} as const;
type SenderName = keyof typeof SENDERS;

const netns = canUseNetns();
const peers = netns.ok ? dnsPeersSupport(['dig', 'unbound', 'postfix']) : netns;

interface Sender { ns: string; postfix: PostfixInstance }

function unboundConf(dir: string, resolver: string): string {
  return `server:
  interface: 127.0.0.1
  port: 53
  outgoing-interface: ${resolver}
  access-control: 127.0.0.0/8 allow
  do-daemonize: no
  username: ""
  chroot: ""
  directory: "${dir}"
  pidfile: "${join(dir, 'unbound.pid')}"
  use-syslog: no
  logfile: "${join(dir, 'unbound.log')}"
  verbosity: 1
  do-ip6: no
  module-config: "iterator"
  local-zone: "test." nodefault
  do-not-query-localhost: no
  qname-minimisation: no
stub-zone:
  name: "example.test"
  stub-addr: ${RESPONDER}
`;
}

describe.skipIf(!peers.ok)(`steering by DNS through unbound and Postfix${peers.ok ? '' : ` (skipped: ${peers.reason})`}`, () => {
  const lab = new NetnsLab();
  const senders = {} as Record<SenderName, Sender>;
  let dir = '';
  let mx = '';
  let ichidan: ChildProcess;
  const events: Array<Record<string, unknown>> = [];
  const wakers: Array<() => void> = [];

  async function event(match: (e: Record<string, unknown>) => boolean, timeoutMs = 20_000): Promise<Record<string, unknown>> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const found = events.find(match);
      if (found) return found;
      if (Date.now() > deadline) throw new Error(`no such event from Ichidan; got ${JSON.stringify(events)}`);
      await new Promise<void>((resolve) => { wakers.push(resolve); setTimeout(resolve, 200); });
    }
  }

  async function command(c: object): Promise<void> {
    const before = events.filter((e) => e.event === 'ok').length;
    ichidan.stdin!.write(`${JSON.stringify(c)}\n`);
    await event(() => events.filter((e) => e.event === 'ok').length > before);
  }

  /** Mail handed to the sender's Postfix; resolves with its maillog line once delivered (or failed). */
  async function send(name: SenderName, subject: string): Promise<string> {
    const { ns, postfix } = senders[name];
    const r = await lab.run(ns, 'swaks', ['--server', `127.0.0.1:${postfix.port}`, '--from', `${name}@sender.test`, '--to', 'user@example.test', '--header', `Subject: ${subject}`], 20_000);
    expect(r.code, r.stdout + r.stderr).toBe(0);
    const qid = /250 2\.0\.0 Ok: queued as (\w+)/.exec(r.stdout)?.[1];
    expect(qid, r.stdout).toBeTruthy();
    const deadline = Date.now() + 30_000;
    while (Date.now() < deadline) {
      const log = await readFile(postfix.maillog, 'utf8').catch(() => '');
      const line = log.split('\n').find((l) => l.includes(`${qid}: to=<user@example.test>`) && /status=(sent|bounced)/.test(l));
      if (line) return line;
      await sleep(250);
    }
    throw new Error(`no delivery of ${qid} in ${postfix.maillog}:\n${await readFile(postfix.maillog, 'utf8').catch(() => '')}`);
  }

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'ichidan-dns-steer-'));
    mx = lab.namespace('mx');
    for (const address of [RESPONDER, PRIMARY, OVERFLOW, ...PAIRING]) lab.address(mx, 'lo', `${address}/32`);
    for (const name of Object.keys(SENDERS) as SenderName[]) {
      const s = SENDERS[name];
      const ns = lab.namespace(name.slice(0, 5));
      lab.veth({ ns: mx, name: `mx${s.subnet}`, addresses: [`10.53.${s.subnet}.1/24`] }, { ns, name: 'up0', addresses: [`${s.mta}/24`, `${s.resolver}/24`] });
      lab.route(ns, '10.53.0.0/24', `10.53.${s.subnet}.1`);
      // ip netns exec puts this file over /etc/resolv.conf for everything it starts in the namespace.
      mkdirSync(`/etc/netns/${ns}`, { recursive: true });
      await writeFile(`/etc/netns/${ns}/resolv.conf`, 'nameserver 127.0.0.1\noptions attempts:2 timeout:2\n');
      const unboundDir = join(dir, `unbound-${name}`);
      mkdirSync(unboundDir);
      await writeFile(join(unboundDir, 'unbound.conf'), unboundConf(unboundDir, s.resolver));
      lab.spawn(ns, TOOLS.unbound, ['-d', '-c', join(unboundDir, 'unbound.conf')]);
      const postfix = await startPostfix(`dns-${name}`, '127.0.0.1', {
        smtp_dns_support_level: 'enabled',
        default_transport: 'smtp',
        smtp_bind_address: s.mta,
        myhostname: `${name}.sender.test`,
        smtp_connect_timeout: '5s',
        maximal_backoff_time: '2s',
        minimal_backoff_time: '1s',
        queue_run_delay: '1s',
      }, { netns: ns });
      senders[name] = { ns, postfix };
    }
    const config = {
      hostname: 'ns.ichidan.test',
      dataDir: join(dir, 'ichidan'),
      log: { level: 'info' },
      listeners: [
        { name: 'mx', role: 'mx', address: PRIMARY, port: 25 },
        { name: 'overflow', role: 'mx', address: OVERFLOW, port: 25 },
      ],
      tenants: { hosted: { domains: ['example.test'] } },
      admission: {
        dns: {
          enabled: true, address: RESPONDER, port: 53, ttl: '1s',
          primary: [{ name: 'mx1.example.test', address: PRIMARY }],
          overflow: [{ name: 'mxc.example.test', address: OVERFLOW }],
          pairingAddresses: PAIRING,
        },
      },
    };
    await writeFile(join(dir, 'ichidan.json'), JSON.stringify(config));
    ichidan = lab.spawn(mx, process.execPath, [HARNESS, join(dir, 'ichidan.json'), join(dir, 'ichidan.log')], { stdio: ['pipe', 'pipe', 'pipe'] });
    let stderr = '';
    ichidan.stderr!.on('data', (d) => { stderr += d; });
    createInterface({ input: ichidan.stdout! }).on('line', (line) => {
      events.push(JSON.parse(line) as Record<string, unknown>);
      for (const wake of wakers.splice(0)) wake();
    });
    await event((e) => e.event === 'ready').catch((err: Error) => { throw new Error(`${err.message}\n${stderr}`); });
    // unbound answers once it has started.
    for (const name of Object.keys(SENDERS) as SenderName[]) {
      for (let i = 0; i < 50; i++) {
        const r = await lab.run(senders[name].ns, TOOLS.dig, ['@127.0.0.1', '+time=1', '+tries=1', 'example.test', 'SOA']);
        if (r.stdout.includes('status: NOERROR')) break;
        await sleep(200);
      }
    }
  }, 120_000);

  afterAll(async () => {
    for (const s of Object.values(senders)) await s.postfix.stop();
    await lab.cleanup();
    for (const s of Object.values(senders)) rmSync(`/etc/netns/${s.ns}`, { recursive: true, force: true });
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  async function digThrough(name: SenderName, args: string[]): Promise<string> {
    const r = await lab.run(senders[name].ns, TOOLS.dig, ['@127.0.0.1', '+time=2', '+tries=1', '+noall', '+answer', ...args]);
    return r.stdout.trim();
  }

  it('normal: mail arrives at the primary host, at the address handed to each resolver, and each resolver is paired with its MTA', async () => {
    for (const name of Object.keys(SENDERS) as SenderName[]) {
      expect(await digThrough(name, ['example.test', 'MX'])).toMatch(/^example\.test\.\s+\d+\s+IN\s+MX\s+10 mx1\.example\.test\.$/);
      const line = await send(name, `normal from ${name}`);
      expect(line).toMatch(/status=sent \(250 /);
      const relay = /relay=mx1\.example\.test\[([\d.]+)\]:25/.exec(line);
      expect(relay, line).not.toBeNull();
      expect(PAIRING).toContain(relay![1]);
      const s = SENDERS[name];
      await event((e) => e.event === 'paired' && e.resolver === s.resolver && e.client === s.mta);
    }
    const handed = await Promise.all((Object.keys(SENDERS) as SenderName[]).map((n) => digThrough(n, ['mx1.example.test', 'A'])));
    // Each resolver its own pairing address, so the MTA that connects on it is told apart.
    expect(new Set(handed.map((h) => h.split(/\s+/).at(-1)))).toEqual(new Set(PAIRING));
  });

  it('high load: the known resolver keeps the primary host, the other gets the overflow host and Postfix delivers there', async () => {
    await command({ known: SENDERS.known.resolver });
    await command({ level: 'overload' });
    // The answers' TTL (1 s) lets unbound's cached ones expire.
    await sleep(2_000);
    expect(await digThrough('stranger', ['example.test', 'MX'])).toMatch(/MX\s+10 mxc\.example\.test\.$/);
    expect(await digThrough('known', ['example.test', 'MX'])).toMatch(/MX\s+10 mx1\.example\.test\.$/);
    const stranger = await send('stranger', 'flood');
    expect(stranger).toMatch(new RegExp(`relay=mxc\\.example\\.test\\[${OVERFLOW.replace(/\./g, '\\.')}\\]:25.*status=sent \\(250 `));
    const known = await send('known', 'during the flood');
    expect(known).toMatch(/relay=mx1\.example\.test\[10\.53\.0\.4[12]\]:25.*status=sent \(250 /);
    const log = await readFile(join(dir, 'ichidan.log'), 'utf8');
    expect(log).toContain('"listener":"overflow"');
  });
});
