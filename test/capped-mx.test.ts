// A real Postfix MX that takes at most 10 connections per client address, and Ichidan with its
// defaults (maxConnections 20) in front of it, queued and as the transparent proxy
// (test/helpers/capped-mx.ts): the cap is learnt from the 421 at the banner, so everything arrives
// within a bounded time, the MX sees no more than 10 of our connections once the cap is known,
// nothing is paused for minutes and no tenant is blamed.
//
// Needs root and Debian's postfix package; with CI set, a missing one is an error, never a skip.
import { afterEach, describe, expect, it } from 'vitest';
import { CAP, postfixSupport, runProxied, runQueued, type CappedRun } from './helpers/capped-mx.js';

const BOUND_MS = 60_000;
const support = postfixSupport();
if (!support.ok && process.env.CI) throw new Error(`the capped-MX scenarios need a real Postfix under CI: ${support.reason}`);

const runs: CappedRun[] = [];
afterEach(async () => {
  for (const r of runs.splice(0)) await r.stop();
});

/** Ichidan's own account: no pair paused, no tenant suspended, no deferral counted against a message. */
function expectNoThrottling(run: CappedRun): void {
  const logs = run.app.logs;
  expect(logs.filter((l) => /pair paused|tenant suspended/.test(String(l.msg)))).toEqual([]);
  expect(run.app.app.queue.control.events({ limit: 100 }).filter((e) => e.kind === 'paused' || e.kind === 'suspended')).toEqual([]);
}

describe.skipIf(!support.ok)(`a real Postfix MX capped at ${CAP} connections per client${support.ok ? '' : ` (skipped: ${support.reason})`}`, () => {
  it('queued delivery with the defaults learns the cap: 600 messages of three tenants all arrive, no pause, no tenant blamed', async () => {
    const run = await runQueued(200, BOUND_MS);
    runs.push(run);
    console.log(`queued: ${run.arrived} of ${run.total} arrived in ${run.ms} ms; ${run.refused} connections refused; peak after learning ${run.peakAfterLearning}`);
    expect(run.clientDeferrals).toBe(0);
    expect(run.arrived).toBe(run.total);
    expect(run.ms).toBeLessThan(BOUND_MS);
    expect(run.peakAfterLearning).toBeLessThanOrEqual(CAP);
    expectNoThrottling(run);
    const pair = run.app.app.queue.scheduler.pairs().find((p) => p.site.includes('127.0.0.134'));
    expect(pair?.window).toBeLessThanOrEqual(CAP);
    // no message was deferred for the refusal: every recipient was delivered on its first counted attempt
    expect(run.app.logs.filter((l) => l.msg === 'delivery attempt' && l.verdict !== 'delivered')).toEqual([]);
  }, 120_000);

  it('the proxy with the defaults learns the cap: 300 proxied messages of three tenants all arrive, clients retrying 4xx as MTAs do', async () => {
    const run = await runProxied(100, BOUND_MS);
    runs.push(run);
    console.log(`proxy: ${run.arrived} of ${run.total} arrived in ${run.ms} ms; ${run.refused} connections refused; ${run.clientDeferrals} 4xx to the clients; peak after learning ${run.peakAfterLearning}`);
    expect(run.arrived).toBe(run.total);
    expect(run.ms).toBeLessThan(BOUND_MS);
    expect(run.peakAfterLearning).toBeLessThanOrEqual(CAP);
    // the clients were turned away only as often as the MX refused a connection
    expect(run.clientDeferrals).toBeLessThanOrEqual(run.refused);
    expectNoThrottling(run);
  }, 120_000);
});
