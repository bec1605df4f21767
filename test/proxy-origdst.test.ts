/*
 * The SO_ORIGINAL_DST addon against real netfilter: a client namespace dials addresses that exist
 * only in this test (203.0.113.25:25, 2001:db8::25 port 25), routed over a veth into a server
 * namespace whose iptables REDIRECT / DNAT rules send them to a small server there
 * (test/helpers/origdst-server.ts, run from dist/ with the built loader); the server must recover
 * the dialled address and port, and report null for connections dialled to it directly.
 *
 * Needs root, iproute2 and iptables (CI must have them: test/helpers/netns.ts), the addon built by
 * `npm install` (scripts/build-addon.mjs) and dist/ built by tsc.
 */
import type { ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { canUseIp6Nat, canUseNetns, canUseOriginalDst, NetnsLab } from './helpers/netns.js';

const SERVER_SCRIPT = join(import.meta.dirname, '..', 'dist', 'test', 'helpers', 'origdst-server.js');

// Ports inside the server namespace, which is new and empty: nothing else can hold them.
const PLAIN_IPV4_PORT = 2525;
const DUAL_STACK_PORT = 2526;

/** Connects, prints its own port (the server's report names it), and waits for the server to close. */
const CLIENT = `
const net = require('node:net');
const [host, port] = process.argv.slice(1);
const socket = net.connect({ host, port: Number(port) }, () => console.log(socket.localPort));
socket.resume();
socket.on('error', (error) => { console.error(error.message); process.exitCode = 1; });
`;

const netns = canUseNetns();
const support = netns.ok ? canUseOriginalDst() : netns;
const ip6Nat = support.ok ? canUseIp6Nat() : support;

interface Report {
  event: string;
  remotePort?: number;
  originalDst?: unknown;
  error?: string;
}

describe.skipIf(!support.ok)(`original destination of redirected connections${support.ok ? '' : ` (skipped: ${support.reason})`}`, () => {
  const lab = new NetnsLab();
  let client: string;
  let server: ChildProcess;
  const reports: Report[] = [];
  const waiters: Array<() => void> = [];

  function nextReport(match: (report: Report) => boolean, what: string): Promise<Report> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`the server reported no ${what}; it said: ${JSON.stringify(reports)}`)), 10_000);
      const look = (): boolean => {
        const found = reports.find(match);
        if (!found) return false;
        clearTimeout(timer);
        resolve(found);
        return true;
      };
      if (!look()) waiters.push(() => void look());
    });
  }

  /** The server's report on one connection from the client namespace to host:port. */
  async function dial(host: string, port: number): Promise<Report> {
    const run = await lab.run(client, process.execPath, ['-e', CLIENT, host, String(port)]);
    if (run.code !== 0) throw new Error(`the client could not connect to ${host}:${port}: ${run.stderr.trim()}`);
    const localPort = Number(run.stdout.trim());
    const report = await nextReport((r) => r.event === 'connection' && r.remotePort === localPort, `connection from port ${localPort}`);
    if (report.error) throw new Error(`the server's reader threw: ${report.error}`);
    return report;
  }

  beforeAll(async () => {
    if (!existsSync(SERVER_SCRIPT)) throw new Error(`${SERVER_SCRIPT} is missing: build with "npx tsc -p tsconfig.json" first`);
    const serverNs = lab.namespace('origdst');
    client = lab.namespace('client');
    lab.veth(
      { ns: serverNs, name: 'to-client', addresses: ['192.0.2.1/24', '2001:db8:1::1/64'] },
      { ns: client, name: 'to-server', addresses: ['192.0.2.2/24', '2001:db8:1::2/64'] },
    );
    lab.route(client, '203.0.113.0/24', '192.0.2.1');
    lab.route(client, '2001:db8::/64', '2001:db8:1::1');

    const fromClient = { family: 4 as const, inInterface: 'to-client', port: 25 };
    lab.redirect(serverNs, { ...fromClient, destination: '203.0.113.25' }, PLAIN_IPV4_PORT);
    lab.redirect(serverNs, { ...fromClient, destination: '203.0.113.26' }, DUAL_STACK_PORT);
    lab.dnat(serverNs, { ...fromClient, destination: '203.0.113.27', port: 587 }, `192.0.2.1:${PLAIN_IPV4_PORT}`);
    if (ip6Nat.ok) {
      lab.redirect(serverNs, { family: 6, inInterface: 'to-client', destination: '2001:db8::25', port: 25 }, DUAL_STACK_PORT);
    }

    server = lab.spawn(serverNs, process.execPath, [SERVER_SCRIPT, '0.0.0.0', String(PLAIN_IPV4_PORT), '::', String(DUAL_STACK_PORT)]);
    let stderr = '';
    server.stderr!.on('data', (chunk) => { stderr += chunk; });
    createInterface({ input: server.stdout! }).on('line', (line) => {
      reports.push(JSON.parse(line) as Report);
      for (const wake of waiters.splice(0)) wake();
    });
    const exited = new Promise<never>((_, reject) => {
      server.on('exit', (code) => reject(new Error(`the server exited (${code}) before listening: ${stderr} ${JSON.stringify(reports)}`)));
    });
    await Promise.race([nextReport((r) => r.event === 'listening', 'listening'), exited]);
  });

  afterAll(async () => {
    await lab.cleanup();
  });

  it('REDIRECT of 203.0.113.25:25 to an IPv4 listener gives 203.0.113.25:25', async () => {
    const report = await dial('203.0.113.25', 25);
    expect(report.originalDst).toEqual({ address: '203.0.113.25', port: 25, family: 4 });
  });

  it('REDIRECT to a dual-stack listener (IPv4-mapped socket) gives the IPv4 destination', async () => {
    const report = await dial('203.0.113.26', 25);
    expect(report.originalDst).toEqual({ address: '203.0.113.26', port: 25, family: 4 });
  });

  it('DNAT of 203.0.113.27:587 to the listener gives 203.0.113.27:587', async () => {
    const report = await dial('203.0.113.27', 587);
    expect(report.originalDst).toEqual({ address: '203.0.113.27', port: 587, family: 4 });
  });

  it('a connection dialled to the listener itself is not redirected: null', async () => {
    expect((await dial('192.0.2.1', PLAIN_IPV4_PORT)).originalDst).toBeNull();
    expect((await dial('192.0.2.1', DUAL_STACK_PORT)).originalDst).toBeNull();
    expect((await dial('2001:db8:1::1', DUAL_STACK_PORT)).originalDst).toBeNull();
  });

  it.skipIf(!ip6Nat.ok)(`REDIRECT of [2001:db8::25]:25 gives the IPv6 destination${ip6Nat.ok ? '' : ` (skipped: ${ip6Nat.reason})`}`, async () => {
    const report = await dial('2001:db8::25', 25);
    expect(report.originalDst).toEqual({ address: '2001:db8::25', port: 25, family: 6 });
  });
});
