/*
 * A real Postfix MX that takes at most CAP connections per client address
 * (smtpd_client_connection_count_limit, no exceptions), and Ichidan in front of it with its
 * default limits, queued or as the transparent proxy, with three tenants sending at once: for the
 * scenario test (test/capped-mx.test.ts) and the benchmark (bench/bench-capped-mx.ts).
 *
 * Takes: messages per tenant and a bound on the run. Gives: how many arrived at the MX (its log)
 * and in how long, how many connections it refused for the cap, the most connections one client
 * address held at it once the cap was known (sampled from /proc/net/tcp from the first refusal
 * on), the 4xx the proxy's clients were given, and the running Ichidan for further checks.
 * Needs root and Debian's postfix package (bench/bench-postfix.ts). Network: loopback only.
 */
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import nodemailer, { type Transporter } from 'nodemailer';
import { sampleConnections } from '../../bench/bench-proc.js';
import { startPostfix, type PostfixInstance } from '../../bench/bench-postfix.js';
import { Submitter } from '../../bench/bench-submit.js';
import { baseConfig, startApp, type TestApp } from './app.js';

export const CAP = 10;
export const MX = '127.0.0.134';
export const TENANTS = { a: '127.0.0.121', b: '127.0.0.122', c: '127.0.0.123' } as const;

export interface CappedRun {
  total: number;
  arrived: number;
  ms: number;
  refused: number;
  peakAfterLearning: number;
  clientDeferrals: number;
  app: TestApp;
  stop(): Promise<void>;
}

export function postfixSupport(): { ok: true } | { ok: false; reason: string } {
  if (process.getuid?.() !== 0) return { ok: false, reason: 'Postfix needs root' };
  if (!existsSync('/usr/lib/postfix/sbin/master')) return { ok: false, reason: 'Postfix is not installed' };
  return { ok: true };
}

export function cappedMx(): Promise<PostfixInstance> {
  return startPostfix('capped', MX, {
    mynetworks: `${MX}/32`,
    relay_domains: 'capped.example',
    smtpd_relay_restrictions: 'permit_auth_destination, reject',
    relay_transport: 'discard:capped MX',
    smtpd_client_connection_count_limit: String(CAP),
    smtpd_client_event_limit_exceptions: '',
    // anvil, which counts each client's connections for the cap, logs the most it counted every second.
    anvil_status_update_time: '1s',
  });
}

async function mxLog(mx: PostfixInstance): Promise<{ arrived: number; refused: number }> {
  const text = existsSync(mx.maillog) ? await readFile(mx.maillog, 'utf8') : '';
  return {
    arrived: (text.match(/postfix\/discard\[\d+\]: \w+: to=<[abc]\d+@capped\.example>/g) ?? []).length,
    refused: (text.match(/Connection concurrency limit exceeded/g) ?? []).length,
  };
}

async function watch(mx: PostfixInstance, total: number, boundMs: number): Promise<{ ms: number; arrived: number; refused: number; peakAfterLearning: number }> {
  const started = Date.now();
  let sampler: { stop(): number } | null = null;
  let log = await mxLog(mx);
  while (log.arrived < total && Date.now() - started < boundMs) {
    await new Promise((r) => setTimeout(r, 100));
    log = await mxLog(mx);
    if (log.refused > 0 && !sampler) {
      // The refused connection itself may still be open for a moment.
      await new Promise((r) => setTimeout(r, 200));
      sampler = sampleConnections(MX, mx.port, 10);
    }
  }
  return { ms: Date.now() - started, ...log, peakAfterLearning: sampler?.stop() ?? 0 };
}

const tenants = () => Object.fromEntries(Object.entries(TENANTS).map(([name, address]) => [name, { networks: [`${address}/32`] }]));

/** Queued: each tenant's mail user agents submit over 4 connections; Ichidan delivers with its defaults. */
export async function runQueued(perTenant: number, boundMs: number): Promise<CappedRun> {
  const mx = await cappedMx();
  const app = await startApp((dataDir) => baseConfig(dataDir, {
    log: { level: 'info' },
    listeners: [{ name: 'mx', role: 'mx', address: '127.0.0.1', port: 0, tls: 'none' }],
    tenants: tenants(),
    routes: { 'capped.example': { host: MX, port: mx.port } },
    queue: { fsync: false },
  }));
  const submitters = Object.entries(TENANTS).map(([name, address]) => new Submitter(name, address, app.port('mx'), 4, 1024));
  for (const s of submitters) s.submit(Array.from({ length: perTenant }, (_, i) => ({ seq: i + 1, to: `${s.tenant}${i + 1}@capped.example` })));
  const result = await watch(mx, perTenant * 3, boundMs);
  await Promise.all(submitters.map((s) => s.stop()));
  return {
    total: perTenant * 3, ...result, clientDeferrals: submitters.reduce((n, s) => n + s.failed, 0), app,
    async stop() { await app.stop(); await mx.stop(); },
  };
}

/** Proxied: each tenant's legacy MTA keeps 8 connections to the proxy (24 in all) and retries a 4xx after half a second. */
export async function runProxied(perTenant: number, boundMs: number): Promise<CappedRun> {
  const mx = await cappedMx();
  const app = await startApp((dataDir) => baseConfig(dataDir, {
    log: { level: 'info' },
    listeners: [{ name: 'proxy', role: 'proxy', address: '127.0.0.1', port: 0, tls: 'none' }],
    tenants: tenants(),
    routes: { 'capped.example': { host: MX, port: mx.port } },
    queue: { fsync: false },
  }), { originalDst: () => ({ address: MX, port: mx.port, family: 4 }) });
  let clientDeferrals = 0;
  const until = Date.now() + boundMs;
  const send = async (tenant: string, transport: Transporter, i: number) => {
    while (Date.now() < until) {
      try {
        return await transport.sendMail({ envelope: { from: `mta@${tenant}.test`, to: `${tenant}${i}@capped.example` }, raw: `Subject: ${tenant} ${i}\r\n\r\nproxied\r\n` });
      } catch (err) {
        if (!/^4/.test(String((err as { responseCode?: number }).responseCode ?? ''))) throw err;
        clientDeferrals++;
        await new Promise((r) => setTimeout(r, 500));
      }
    }
  };
  const transports: Transporter[] = [];
  const sending = Object.entries(TENANTS).map(async ([tenant, address]) => {
    const transport = nodemailer.createTransport({ host: '127.0.0.1', port: app.port('proxy'), localAddress: address, ignoreTLS: true, pool: true, maxConnections: 8, maxMessages: Infinity } as never);
    transports.push(transport);
    await Promise.all(Array.from({ length: perTenant }, (_, i) => send(tenant, transport, i + 1)));
  });
  const result = await watch(mx, perTenant * 3, boundMs);
  await Promise.all(sending);
  for (const t of transports) t.close();
  return {
    total: perTenant * 3, ...result, clientDeferrals, app,
    async stop() { await app.stop(); await mx.stop(); },
  };
}
