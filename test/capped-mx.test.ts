// A real Postfix MX that takes at most 10 connections per client address
// (smtpd_client_connection_count_limit = 10, no exceptions), and Ichidan with its defaults
// (maxConnections 20) in front of it, queued and as the transparent proxy: the cap is learnt from
// the 421 at the banner, so everything arrives within a bounded time, the MX sees no more than 10
// of our connections once the cap is known, nothing is paused for minutes and no tenant is blamed.
//
// Needs root and Debian's postfix package (bench/bench-postfix.ts runs a private instance); with CI
// set, a missing one is an error, never a skip.
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import nodemailer, { type Transporter } from 'nodemailer';
import { afterEach, describe, expect, it } from 'vitest';
import { sampleConnections } from '../bench/bench-proc.js';
import { startPostfix, type PostfixInstance } from '../bench/bench-postfix.js';
import { Submitter } from '../bench/bench-submit.js';
import { baseConfig, startApp, type TestApp } from './helpers/app.js';

const MX = '127.0.0.134';
const CAP = 10;
const TENANTS = { a: '127.0.0.121', b: '127.0.0.122', c: '127.0.0.123' } as const;
const BOUND_MS = 60_000;

function postfixSupport(): { ok: true } | { ok: false; reason: string } {
  if (process.getuid?.() !== 0) return { ok: false, reason: 'Postfix needs root' };
  if (!existsSync('/usr/lib/postfix/sbin/master')) return { ok: false, reason: 'Postfix is not installed' };
  return { ok: true };
}

const support = postfixSupport();
if (!support.ok && process.env.CI) throw new Error(`the capped-MX scenarios need a real Postfix under CI: ${support.reason}`);

const cleanup: Array<() => Promise<unknown>> = [];
afterEach(async () => {
  for (const c of cleanup.splice(0).reverse()) await c();
});

async function cappedMx(): Promise<PostfixInstance> {
  const mx = await startPostfix('capped', MX, {
    mynetworks: `${MX}/32`,
    relay_domains: 'capped.example',
    smtpd_relay_restrictions: 'permit_auth_destination, reject',
    relay_transport: 'discard:capped MX of the test',
    smtpd_client_connection_count_limit: String(CAP),
    smtpd_client_event_limit_exceptions: '',
  });
  cleanup.push(() => mx.stop());
  return mx;
}

/** What the MX's log says: messages taken, connections refused for the cap (with when the first was). */
async function mxLog(mx: PostfixInstance): Promise<{ arrived: number; refused: number }> {
  const text = existsSync(mx.maillog) ? await readFile(mx.maillog, 'utf8') : '';
  return {
    arrived: (text.match(/postfix\/discard\[\d+\]: \w+: to=<[abc]\d+@capped\.example>/g) ?? []).length,
    refused: (text.match(/Connection concurrency limit exceeded/g) ?? []).length,
  };
}

/**
 * Waits for `total` arrivals; from the first refusal on (the cap is then known) samples the most
 * connections one client address holds at the MX.
 */
async function watch(mx: PostfixInstance, total: number): Promise<{ ms: number; arrived: number; refused: number; peakAfterLearning: number }> {
  const started = Date.now();
  let sampler: { stop(): number } | null = null;
  let log = await mxLog(mx);
  while (log.arrived < total && Date.now() - started < BOUND_MS) {
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

function throttleLogs(t: TestApp): Array<Record<string, unknown>> {
  return t.logs.filter((l) => /pair paused|tenant suspended/.test(String(l.msg)));
}

describe.skipIf(!support.ok)(`a real Postfix MX capped at ${CAP} connections per client${support.ok ? '' : ` (skipped: ${support.reason})`}`, () => {
  it('queued delivery with the defaults learns the cap: 600 messages of three tenants all arrive, no pause, no tenant blamed', async () => {
    const mx = await cappedMx();
    const t = await startApp((dataDir) => baseConfig(dataDir, {
      listeners: [{ name: 'mx', role: 'mx', address: '127.0.0.1', port: 0, tls: 'none' }],
      tenants: Object.fromEntries(Object.entries(TENANTS).map(([name, address]) => [name, { networks: [`${address}/32`] }])),
      routes: { 'capped.example': { host: MX, port: mx.port } },
      queue: { fsync: false },
    }));
    cleanup.push(() => t.stop());
    const perTenant = 200;
    const submitters = Object.entries(TENANTS).map(([name, address]) => new Submitter(name, address, t.port('mx'), 4, 1024));
    cleanup.push(() => Promise.all(submitters.map((s) => s.stop())));
    for (const s of submitters) s.submit(Array.from({ length: perTenant }, (_, i) => ({ seq: i + 1, to: `${s.tenant}${i + 1}@capped.example` })));
    const result = await watch(mx, perTenant * 3);
    console.log(`queued: ${result.arrived} of ${perTenant * 3} arrived in ${result.ms} ms; ${result.refused} connections refused; peak after learning ${result.peakAfterLearning}`);
    expect(submitters.reduce((n, s) => n + s.accepted.size, 0)).toBe(perTenant * 3);
    expect(result.arrived).toBe(perTenant * 3);
    expect(result.ms).toBeLessThan(BOUND_MS);
    expect(result.peakAfterLearning).toBeLessThanOrEqual(CAP);
    expect(throttleLogs(t)).toEqual([]);
    const pair = t.app.queue.scheduler.pairs().find((p) => p.maxConnections === 20 && p.window > 0);
    expect(pair?.window).toBeLessThanOrEqual(CAP);
  }, 120_000);

  it('the proxy with the defaults learns the cap: 300 proxied messages of three tenants all arrive, clients retrying 4xx as MTAs do', async () => {
    const mx = await cappedMx();
    const t = await startApp((dataDir) => baseConfig(dataDir, {
      listeners: [{ name: 'proxy', role: 'proxy', address: '127.0.0.1', port: 0, tls: 'none' }],
      tenants: Object.fromEntries(Object.entries(TENANTS).map(([name, address]) => [name, { networks: [`${address}/32`] }])),
      routes: { 'capped.example': { host: MX, port: mx.port } },
      queue: { fsync: false },
    }), { originalDst: () => ({ address: MX, port: mx.port, family: 4 }) });
    cleanup.push(() => t.stop());
    const perTenant = 100;
    let deferrals = 0;
    const until = Date.now() + BOUND_MS;
    const send = async (tenant: string, transport: Transporter, i: number) => {
      while (Date.now() < until) {
        try {
          return await transport.sendMail({ envelope: { from: `mta@${tenant}.test`, to: `${tenant}${i}@capped.example` }, raw: `Subject: ${tenant} ${i}\r\n\r\nproxied\r\n` });
        } catch (err) {
          if (!/^4/.test(String((err as { responseCode?: number }).responseCode ?? ''))) throw err;
          deferrals++;
          if (deferrals % 500 === 1) console.log(tenant, (err as Error).message);
          await new Promise((r) => setTimeout(r, 500));
        }
      }
    };
    const sending = Object.entries(TENANTS).map(async ([tenant, address]) => {
      // Each legacy MTA keeps 8 connections: 24 in all, well past the MX's cap.
      const transport = nodemailer.createTransport({ host: '127.0.0.1', port: t.port('proxy'), localAddress: address, ignoreTLS: true, pool: true, maxConnections: 8, maxMessages: Infinity } as never);
      cleanup.push(async () => transport.close());
      await Promise.all(Array.from({ length: perTenant }, (_, i) => send(tenant, transport, i + 1)));
    });
    const result = await watch(mx, perTenant * 3);
    await Promise.all(sending);
    if (result.arrived < perTenant * 3) console.log(t.logs.filter((l) => Number(l.level) >= 40).slice(0, 30));
    console.log(`proxy: ${result.arrived} of ${perTenant * 3} arrived in ${result.ms} ms; ${result.refused} connections refused; ${deferrals} 4xx to the clients; peak after learning ${result.peakAfterLearning}`);
    expect(result.arrived).toBe(perTenant * 3);
    expect(result.ms).toBeLessThan(BOUND_MS);
    expect(result.peakAfterLearning).toBeLessThanOrEqual(CAP);
    expect(throttleLogs(t)).toEqual([]);
  }, 120_000);
});
