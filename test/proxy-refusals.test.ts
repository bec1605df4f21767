// What the transparent proxy refuses or defers: a destination that drops mid-DATA or refuses at its
// banner (4xx to the client), routing loops and connections that were not redirected, data past the
// size limit or with a bare LF (as the listeners do), clients outside the trusted and tenant networks.
import { afterEach, describe, expect, it } from 'vitest';
import { cleanup, proxy, runCleanup, sink, swaks, to, type OriginalDst } from './helpers/proxy-app.js';
import { RawSmtp } from './helpers/raw-smtp.js';

afterEach(runCleanup);

describe('transparent proxy (loopback): refusals', () => {
  it('gives the client a 4xx when the destination drops mid-DATA, and refuses loops and connections that were not redirected', async () => {
    const mx = await sink({ host: '127.0.0.53' });
    let dst: OriginalDst | null = { address: '127.0.0.53', port: mx.port, family: 4 };
    const t = await proxy(() => dst);
    // a destination that closes the connection as the data arrives
    const { createServer: tcp } = await import('node:net');
    const dropper = tcp((s) => {
      s.write('220 drop.test ESMTP\r\n');
      s.on('data', (d) => {
        const text = d.toString();
        if (/^EHLO/m.test(text)) s.write('250-drop.test\r\n250 PIPELINING\r\n');
        else if (/^MAIL/m.test(text)) s.write('250 ok\r\n');
        else if (/^RCPT/m.test(text)) s.write('250 ok\r\n');
        else if (/^DATA/m.test(text)) s.write('354 go\r\n');
        else s.destroy();
      });
    });
    await new Promise<void>((r) => dropper.listen(0, '127.0.0.54', () => r()));
    cleanup.push(() => new Promise((r) => dropper.close(r)));
    dst = { address: '127.0.0.54', port: (dropper.address() as { port: number }).port, family: 4 };
    const dropped = await swaks(t.port('proxy'), ['--from', 'a@legacy.test', '--to', 'x@dest.test']);
    expect(dropped).toMatch(/<\*\* 451 4\.4\.2 destination failed: 127\.0\.0\.54:\d+: ECONNRESET/);
    dst = { address: '127.0.0.1', port: t.port('proxy'), family: 4 };
    expect(await swaks(t.port('proxy'), ['--from', 'a@legacy.test', '--to', 'x@dest.test'])).toMatch(/<\*\* 554 5\.4\.6 routing loop/);
    dst = null;
    expect(await swaks(t.port('proxy'), ['--from', 'a@legacy.test', '--to', 'x@dest.test'])).toMatch(/<\*\* 554 5\.4\.6 no original destination/);
    expect(mx.messages).toHaveLength(0);
  });

  it('refuses data past the size limit or with a bare LF as the listeners do, breaking off the destination\'s transaction before its final dot', async () => {
    const mx = await sink({ host: '127.0.0.49' });
    const t = await proxy(() => to(mx), () => ({ limits: { maxMessageSize: '4KB' } }));
    const big = await RawSmtp.atData(t.port('proxy'), 'a@legacy.test', ['x@dest.test']);
    big.send(`Subject: big\r\n\r\n${'0123456789abcdef\r\n'.repeat(600)}.\r\n`);
    expect((await big.reply()).join('\n')).toMatch(/^552 5\.3\.4 message too big/);
    big.socket.destroy();
    const bare = await RawSmtp.atData(t.port('proxy'), 'a@legacy.test', ['x@dest.test']);
    bare.send('Subject: bare\r\n\r\none\ntwo\r\n.\r\n');
    expect((await bare.reply()).join('\n')).toMatch(/^550 5\.6\.0 bare CR or LF/);
    bare.socket.destroy();
    await new Promise((r) => setTimeout(r, 300));
    expect(mx.messages).toHaveLength(0);
  });

  it('counts its connections, transactions and messages in the same metrics as the other listeners', async () => {
    const mx = await sink({ host: '127.0.0.47' });
    let dst: OriginalDst | null = to(mx);
    const t = await proxy(() => dst);
    const count = async (name: string, labels: Record<string, string>) => {
      const metric = (await t.app.metrics.getMetricsAsJSON()).find((m) => m.name === name);
      const values = (metric?.values ?? []) as Array<{ labels: Record<string, string | number>; value: number }>;
      return values.filter((v) => Object.entries(labels).every(([k, x]) => v.labels[k] === x)).reduce((n, v) => n + v.value, 0);
    };
    expect(await swaks(t.port('proxy'), ['--from', 'a@legacy.test', '--to', 'x@dest.test'])).toMatch(/<- {2}250 /);
    expect(await swaks(t.port('proxy'), ['--from', 'b@legacy.test', '--to', 'y@dest.test'])).toMatch(/<- {2}250 /);
    dst = null;
    expect(await swaks(t.port('proxy'), ['--from', 'a@legacy.test', '--to', 'x@dest.test'])).toMatch(/<\*\* 554 5\.4\.6 no original destination/);
    expect(await count('ichidan_connections_total', { listener: 'proxy' })).toBe(3);
    expect(await count('ichidan_connections_refused_total', { listener: 'proxy' })).toBe(1);
    expect(await count('ichidan_transactions_total', { listener: 'proxy' })).toBe(2);
    expect(await count('ichidan_messages_total', { listener: 'proxy', outcome: 'accepted' })).toBe(2);
    expect(mx.messages).toHaveLength(2);
  });

  it('defers (4xx) when the destination refuses the connection at its banner with a 5xx', async () => {
    const mx = await sink({ host: '127.0.0.48', connect: () => ({ code: 554, text: '5.7.1 your address is listed' }) });
    const t = await proxy(() => to(mx));
    const out = await swaks(t.port('proxy'), ['--from', 'a@legacy.test', '--to', 'x@dest.test']);
    expect(out).toMatch(/<\*\* 451 4\.4\.2 destination failed: 127\.0\.0\.48:\d+: 5\.7\.1 your address is listed \(554\)/);
  });

  it('refuses clients outside the trusted and tenant networks', async () => {
    const mx = await sink({ host: '127.0.0.55' });
    const t = await proxy(() => to(mx), () => ({ trustedNetworks: [] }));
    expect(await swaks(t.port('proxy'), ['--from', 'a@legacy.test', '--to', 'x@dest.test'])).toMatch(/<\*\* 554 5\.7\.1 127\.0\.0\.1 may not use this proxy/);
  });
});
