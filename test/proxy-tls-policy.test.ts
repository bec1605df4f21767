// The transparent proxy applies the recipient domain's outbound TLS rule on the destination session:
// tlsPolicy require-verified and MTA-STS enforce, with a test CA, a loopback DNS and policy server.
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { waitUntil } from './helpers/app.js';
import { startDns } from './helpers/dns-server.js';
import { startPolicyServer } from './helpers/policy-server.js';
import { cleanup, proxy, runCleanup, sink, swaks, to } from './helpers/proxy-app.js';
import { readTranscriptTables, recordsDb } from './helpers/records.js';
import { makeTestCa } from './helpers/test-ca.js';

afterEach(runCleanup);

describe('transparent proxy (loopback): outbound TLS policy', () => {
  it('checks the recipient domain\'s TLS rule on the destination session: verified TLS delivers, a certificate for another name is refused with 4.7.5', async () => {
    const ca = await makeTestCa();
    const good = await ca.issue(['mx.secure.test']);
    const bad = await ca.issue(['elsewhere.test']);
    const mxGood = await sink({ host: '127.0.0.57', ...good });
    const mxBad = await sink({ host: '127.0.0.58', port: mxGood.port, ...bad });
    const d = await startDns({
      'secure.test': { mx: [{ exchange: 'mx.secure.test', priority: 10 }] }, 'mx.secure.test': { a: ['127.0.0.57'] },
      'spoofed.test': { mx: [{ exchange: 'mx.spoofed.test', priority: 10 }] }, 'mx.spoofed.test': { a: ['127.0.0.58'] },
    });
    cleanup.push(() => d.close());
    let dst = to(mxGood);
    const t = await proxy(() => dst, (dataDir) => {
      writeFileSync(join(dataDir, 'ca.pem'), ca.cert);
      return {
      dns: { servers: [d.server] },
      delivery: { mxPort: mxGood.port, mtaSts: { enabled: false }, tls: { caFile: join(dataDir, 'ca.pem') }, tlsPolicy: { 'secure.test': 'require-verified', 'spoofed.test': 'require-verified' }, site: { idleTimeout: '300ms' } },
      };
    });
    const ok = await swaks(t.port('proxy'), ['--from', 'a@legacy.test', '--to', 'x@secure.test']);
    expect(ok).toMatch(/<-  250 2\.6\.0 Ok: sunk/);
    expect(mxGood.messages[0].secure).toBe(true);
    dst = to(mxBad);
    const refused = await swaks(t.port('proxy'), ['--from', 'a@legacy.test', '--to', 'x@spoofed.test']);
    expect(refused).toMatch(/<\*\* 451 4\.7\.5 TLS policy "spoofed\.test" \(require-verified\) for spoofed\.test requires verified TLS: certificate not valid for mx\.spoofed\.test/);
    expect(mxBad.rcptAttempts.size).toBe(0);
    // both sessions' transcripts, with the TLS they used
    await waitUntil(() => {
      const db = recordsDb(t.dataDir);
      try {
        return (db.prepare(`SELECT COUNT(*) AS n FROM connections WHERE ended IS NOT NULL`).get() as { n: number }).n === 2;
      } finally { db.close(); }
    }, 10_000, 'the transcripts');
    const { connections, commands: lines } = readTranscriptTables(t.dataDir);
    const rows = [...connections].sort((a, b) => a.id.localeCompare(b.id)) as Array<{ host: string; tls: string; tenant: string }>;
    expect(rows.map((r) => r.host)).toEqual(['mx.secure.test', 'mx.spoofed.test']);
    expect(rows.every((r) => /^TLSv1\.[23] /.test(r.tls))).toBe(true);
    expect(lines.map((l) => `${l.dir} ${l.text}`)).toContain('client RCPT TO:<x@secure.test>');
  });

  it('applies MTA-STS enforce per recipient domain: the policy\'s MX with a valid certificate delivers, an MX outside the policy is refused with 4.7.5', async () => {
    const ca = await makeTestCa();
    const mxGood = await sink({ host: '127.0.0.45', ...(await ca.issue(['mx.sts.test'])) });
    const mxOther = await sink({ host: '127.0.0.44', port: mxGood.port, ...(await ca.issue(['mx.other.test'])) });
    const policy = (mx: string) => `version: STSv1\r\nmode: enforce\r\nmx: ${mx}\r\nmax_age: 86400\r\n`;
    const policies = await startPolicyServer('127.0.0.46', await ca.issue(['mta-sts.enforced.test', 'mta-sts.outside.test']), {
      'mta-sts.enforced.test': policy('mx.sts.test'), 'mta-sts.outside.test': policy('mx.sts.test'),
    });
    cleanup.push(() => policies.close());
    const d = await startDns({
      'enforced.test': { mx: [{ exchange: 'mx.sts.test', priority: 10 }] }, 'mx.sts.test': { a: ['127.0.0.45'] },
      'outside.test': { mx: [{ exchange: 'mx.other.test', priority: 10 }] }, 'mx.other.test': { a: ['127.0.0.44'] },
      '_mta-sts.enforced.test': { txt: ['v=STSv1; id=1;'] }, '_mta-sts.outside.test': { txt: ['v=STSv1; id=1;'] },
      'mta-sts.enforced.test': { a: ['127.0.0.46'] }, 'mta-sts.outside.test': { a: ['127.0.0.46'] },
    });
    cleanup.push(() => d.close());
    let dst = to(mxGood);
    const t = await proxy(() => dst, (dataDir) => {
      writeFileSync(join(dataDir, 'ca.pem'), ca.cert);
      return { dns: { servers: [d.server] }, delivery: { mxPort: mxGood.port, tls: { caFile: join(dataDir, 'ca.pem') }, mtaSts: { policyPort: policies.port } } };
    });
    expect(await swaks(t.port('proxy'), ['--from', 'a@legacy.test', '--to', 'x@enforced.test'])).toMatch(/<-  250 2\.6\.0 Ok: sunk/);
    expect(mxGood.messages[0].secure).toBe(true);
    dst = to(mxOther);
    const refused = await swaks(t.port('proxy'), ['--from', 'a@legacy.test', '--to', 'x@outside.test']);
    expect(refused).toMatch(/<\*\* 451 4\.7\.5 MTA-STS policy of outside\.test \(enforce\): no MX host matches its mx patterns \(mx\.sts\.test\); not sent/);
    expect(mxOther.rcptAttempts.size).toBe(0);
  });
});
