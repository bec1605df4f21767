/*
 * A small world for outbound TLS policy scenarios (MTA-STS, RFC 8461; delivery.tlsPolicy): a test CA,
 * sinks on one port at 127.0.0.21-24 (a certificate for mx.good.test; one for elsewhere.test; the same
 * again for the testing domain; no STARTTLS), an HTTPS policy server on 127.0.0.20 and a loopback DNS
 * server holding the MX, A and _mta-sts records of good, wrong, outside, testing, none, cached,
 * verified, verified-bad, required and private .test.
 *
 * Takes: nothing. Gives: the servers, the logs of every Egress it made, makeEgress() (delivery
 * config on top of the world's), deliver() (one recipient, its outcome), policy() and sts() to
 * change a policy or its TXT record, close().
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable, Writable } from 'node:stream';
import { Egress, SmtpPool, StsPolicyCache, type OutboundMessage, type RecipientOutcome } from '../../delivery/index.js';
import { createLogger, parseConfig, type ConfigInput } from './app.js';
import { startDns, type TestDns } from './dns-server.js';
import { startPolicyServer, type PolicyServer } from './policy-server.js';
import { startSink, type Sink } from './sink.js';
import { makeTestCa } from './test-ca.js';

export interface TlsWorld {
  /** The port every sink of the world listens on (delivery.mxPort). */
  PORT: number;
  dir: string;
  caFile: string;
  dns: TestDns;
  policies: PolicyServer;
  /** 127.0.0.21, certificate for mx.good.test from the test CA. */
  good: Sink;
  /** 127.0.0.22, certificate for elsewhere.test from the test CA. */
  wrongName: Sink;
  /** 127.0.0.23, the same wrong-name certificate. */
  testingBox: Sink;
  /** 127.0.0.24, no STARTTLS at all. */
  plain: Sink;
  logs: Array<Record<string, unknown>>;
  sessions: SmtpPool;
  makeEgress(extra?: Partial<ConfigInput['delivery']>, top?: Partial<ConfigInput>): Egress;
  deliver(e: Egress, to: string): Promise<RecipientOutcome>;
  close(): Promise<void>;
}

/** An MTA-STS policy file (RFC 8461 section 3.2). */
export const policy = (mode: string, ...mx: string[]) => `version: STSv1\r\nmode: ${mode}\r\n${mx.map((m) => `mx: ${m}\r\n`).join('')}max_age: 86400\r\n`;
/** An _mta-sts TXT record with policy id `id`. */
export const sts = (id: string) => ({ txt: [`v=STSv1; id=${id};`] });

export async function startTlsWorld(): Promise<TlsWorld> {
  const PORT = 20000 + Math.floor(Math.random() * 20000);
  const logs: Array<Record<string, unknown>> = [];
  const sessions = new SmtpPool();
  const stsCache = new StsPolicyCache();
  let n = 0;

  const dir = await mkdtemp(join(tmpdir(), 'ichidan-mtasts-'));
  const ca = await makeTestCa();
  const caFile = await ca.save(join(dir, 'ca.pem'));
  const goodCert = await ca.issue(['mx.good.test']);
  const wrongCert = await ca.issue(['elsewhere.test']);
  const good = await startSink({ host: '127.0.0.21', port: PORT, ...goodCert });
  const wrongName = await startSink({ host: '127.0.0.22', port: PORT, ...wrongCert });
  const testingBox = await startSink({ host: '127.0.0.23', port: PORT, ...wrongCert });
  const plain = await startSink({ host: '127.0.0.24', port: PORT, hideStartTls: true });
  const names = ['good', 'wrong', 'outside', 'testing', 'none', 'cached'].map((d) => `mta-sts.${d}.test`);
  const policies = await startPolicyServer('127.0.0.20', await ca.issue(names), {
    'mta-sts.good.test': policy('enforce', 'mx.good.test'),
    'mta-sts.wrong.test': policy('enforce', '*.wrong.test'),
    'mta-sts.outside.test': policy('enforce', 'mx.good.test'),
    'mta-sts.testing.test': policy('testing', 'mx.testing.test'),
    'mta-sts.none.test': policy('none'),
    'mta-sts.cached.test': policy('enforce', 'mx.good.test'),
  });
  const zones: Parameters<typeof startDns>[0] = {
    'mx.good.test': { a: ['127.0.0.21'] },
    'mx.wrong.test': { a: ['127.0.0.22'] },
    'mx.outside.test': { a: ['127.0.0.21'] },
    'mx.testing.test': { a: ['127.0.0.23'] },
    'mx.testing-elsewhere.test': { a: ['127.0.0.23'] },
    'mx.none.test': { a: ['127.0.0.22'] },
    'mx.plain.test': { a: ['127.0.0.24'] },
    'good.test': { mx: [{ exchange: 'mx.good.test', priority: 10 }] },
    'wrong.test': { mx: [{ exchange: 'mx.wrong.test', priority: 10 }] },
    'outside.test': { mx: [{ exchange: 'mx.outside.test', priority: 10 }] },
    'testing.test': { mx: [{ exchange: 'mx.testing.test', priority: 10 }, { exchange: 'mx.testing-elsewhere.test', priority: 20 }] },
    'none.test': { mx: [{ exchange: 'mx.none.test', priority: 10 }] },
    'cached.test': { mx: [{ exchange: 'mx.good.test', priority: 10 }] },
    'verified.test': { mx: [{ exchange: 'mx.good.test', priority: 10 }] },
    'verified-bad.test': { mx: [{ exchange: 'mx.wrong.test', priority: 10 }] },
    'required.test': { mx: [{ exchange: 'mx.plain.test', priority: 10 }] },
    'private.test': { mx: [{ exchange: 'mx.wrong.test', priority: 10 }] },
    '_mta-sts.good.test': sts('1'),
    '_mta-sts.wrong.test': sts('1'),
    '_mta-sts.outside.test': sts('1'),
    '_mta-sts.testing.test': sts('1'),
    '_mta-sts.none.test': sts('1'),
    '_mta-sts.cached.test': sts('1'),
    '_mta-sts.private.test': sts('1'),
  };
  for (const d of names) zones[d] = { a: ['127.0.0.20'] };
  const dns = await startDns(zones);

  function message(to: string): OutboundMessage {
    n++;
    return {
      queueId: `Q${n}`, tenant: 'default', sender: 'me@sender.test',
      recipients: [{ id: n, address: to, notify: null, orcpt: null }],
      size: 40, ret: null, envid: null, body8bit: false,
      open: () => Readable.from([`Subject: ${to}\r\n\r\nTLS policy test\r\n`]),
    };
  }

  return {
    PORT, dir, caFile, dns, policies, good, wrongName, testingBox, plain, logs, sessions,
    makeEgress(extra = {}, top = {}) {
      const config = parseConfig({
        hostname: 'out.ichidan.test',
        dataDir: dir,
        dns: { servers: [dns.server], timeout: '1s' },
        ...top,
        delivery: { mxPort: PORT, connectTimeout: '2s', tls: { caFile }, mtaSts: { policyPort: policies.port }, ...extra },
      });
      const log = createLogger('info', new Writable({
        write(chunk, _enc, cb) {
          for (const line of String(chunk).split('\n')) if (line) logs.push(JSON.parse(line));
          cb();
        },
      }));
      return new Egress(config, sessions, { policies: stsCache, log });
    },
    async deliver(e, to) {
      const r = await e.deliver(to.split('@')[1], message(to));
      if (r.kind !== 'outcomes') throw new Error('held');
      return r.outcomes[0];
    },
    async close() {
      await sessions.closeAll();
      await dns.close();
      await policies.close();
      await Promise.all([good, wrongName, testingBox, plain].map((s) => s.close()));
      await rm(dir, { recursive: true, force: true });
    },
  };
}
