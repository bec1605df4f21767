// The client's name in the Received header comes from a reverse lookup through dns.servers, only when asked.
import nodemailer from 'nodemailer';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { baseConfig, startApp, type TestApp } from './helpers/app.js';
import { startDns, type TestDns } from './helpers/dns-server.js';
import { startSink, type Sink } from './helpers/sink.js';

describe('reverse lookup of clients', () => {
  let dns: TestDns;
  let sink: Sink;
  beforeAll(async () => {
    dns = await startDns({ '1.0.0.127.in-addr.arpa': { ptr: ['client.ptr.test'] } });
    sink = await startSink({ host: '127.0.0.2' });
  });
  afterAll(async () => {
    await dns?.close();
    await sink?.close();
  });

  async function receivedFor(t: TestApp): Promise<string> {
    const before = sink.messages.length;
    await nodemailer.createTransport({ host: '127.0.0.1', port: t.port('mx'), ignoreTLS: true, name: 'helo.test' })
      .sendMail({ from: 'x@remote.test', to: 'a@alpha.test', text: 'rdns' });
    const got = await sink.waitFor(before + 1);
    return got.at(-1)!.data.toString().split('\r\n\t')[0];
  }

  const config = (dir: string, reverseLookup: boolean) => baseConfig(dir, {
    dns: { servers: [dns.server], reverseLookup },
    tenants: { alpha: { domains: ['alpha.test'] } },
    routes: { 'alpha.test': { host: '127.0.0.2', port: sink.port } },
  });

  it('asks the configured resolver when dns.reverseLookup is on', async () => {
    const t = await startApp((dir) => config(dir, true));
    try {
      expect(await receivedFor(t)).toBe('Received: from helo.test (client.ptr.test [127.0.0.1])');
      expect(dns.queries.some((q) => q.name === '1.0.0.127.in-addr.arpa')).toBe(true);
    } finally {
      await t.stop();
    }
  });

  it('makes no lookup at all when it is off', async () => {
    dns.queries.length = 0;
    const t = await startApp((dir) => config(dir, false));
    try {
      expect(await receivedFor(t)).toBe('Received: from helo.test (unknown [127.0.0.1])');
      expect(dns.queries).toEqual([]);
    } finally {
      await t.stop();
    }
  });
});
