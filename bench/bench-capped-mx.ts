/*
 * The connection-cap benchmark: Ichidan with its default limits (maxConnections 20) in front of a
 * real Postfix MX capped at 10 connections per client address, three tenants sending N messages
 * in all, queued and through the transparent proxy (test/helpers/capped-mx.ts). Prints, per
 * path, how many arrived and in how long, the connections the MX refused for its cap, the most
 * connections it saw from us once the cap was known, and the 4xx the proxy's clients got; ends
 * with one line `RESULT {json}` holding those figures by path (`queued_arrived`, `queued_s`,
 * `queued_refusals`, `queued_peak`, `queued_pauses`, `queued_suspensions`, the same for `proxy_`,
 * and `proxy_client_4xx`).
 *
 * Run (root, dist/ built): node dist/bench/bench-capped-mx.js [total, default 1500] [bound seconds, default 300]
 * Network: loopback only.
 */
import { cleanUp, cleanUpOnSignals } from './bench-cleanup.js';
import { CAP, postfixSupport, runProxied, runQueued } from '../test/helpers/capped-mx.js';

const total = Number(process.argv[2] ?? 1500);
const boundMs = Number(process.argv[3] ?? 300) * 1000;
const support = postfixSupport();
if (!support.ok) throw new Error(support.reason);
cleanUpOnSignals();
const result: Record<string, number> = { cap: CAP, total };
try {
  for (const [path, run] of [['queued', runQueued], ['proxy', runProxied]] as const) {
    const r = await run(Math.ceil(total / 3), boundMs);
    const paused = r.app.logs.filter((l) => /pair paused/.test(String(l.msg))).length;
    const suspended = r.app.logs.filter((l) => /tenant suspended/.test(String(l.msg))).length;
    console.log(`${path}: ${r.arrived} of ${r.total} arrived in ${(r.ms / 1000).toFixed(1)} s; MX refused ${r.refused} connections; `
      + `peak ${r.peakAfterLearning} connections once learnt; ${r.clientDeferrals} 4xx to clients; ${paused} pauses; ${suspended} suspensions`);
    Object.assign(result, {
      [`${path}_arrived`]: r.arrived, [`${path}_s`]: Number((r.ms / 1000).toFixed(2)), [`${path}_refusals`]: r.refused,
      [`${path}_peak`]: r.peakAfterLearning, [`${path}_pauses`]: paused, [`${path}_suspensions`]: suspended,
    });
    if (path === 'proxy') result.proxy_client_4xx = r.clientDeferrals;
    await r.stop();
  }
} finally {
  await cleanUp();
}
console.log(`RESULT ${JSON.stringify(result)}`);
