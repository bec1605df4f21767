// Envelope bytes and message bytes no mailbox should get: invalid UTF-8 in MAIL FROM / RCPT TO,
// 8-bit addresses without SMTPUTF8 (RFC 6531), NUL in DATA; the transparent proxy refuses the
// same addresses instead of passing them on.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { baseConfig, startApp, type TestApp } from './helpers/app.js';
import { RawSmtp } from './helpers/raw-smtp.js';
import { startSink } from './helpers/sink.js';

describe('envelope and data bytes', () => {
  let t: TestApp;
  let lenient: TestApp;

  beforeAll(async () => {
    const build = (allowNul: boolean) => (dir: string) => baseConfig(dir, {
      tenants: { alpha: { domains: ['alpha.test'] } },
      routes: { 'alpha.test': { hold: true } },
      limits: { allowNul },
    });
    t = await startApp(build(false));
    lenient = await startApp(build(true));
  });
  afterAll(async () => {
    await t?.stop();
    await lenient?.stop();
  });

  async function session(app = t): Promise<RawSmtp> {
    const c = await RawSmtp.open(app.port('mx'));
    await c.reply();
    expect(await c.command('EHLO client.test')).toMatch(/^250/);
    return c;
  }

  async function raw(c: RawSmtp, ...parts: Array<string | Buffer>): Promise<string> {
    c.send(Buffer.concat([...parts.map((p) => (typeof p === 'string' ? Buffer.from(p, 'latin1') : p)), Buffer.from('\r\n')]));
    return (await c.reply()).join('\n');
  }

  const BAD = Buffer.from([0xc3, 0x28]); // a lead byte followed by a non-continuation byte
  const OVERLONG = Buffer.from([0xc0, 0xaf]); // "/" encoded in two bytes
  const U_UMLAUT = Buffer.from('ü', 'utf8');

  it.each([
    ['invalid sequence', BAD],
    ['overlong encoding', OVERLONG],
    ['lone continuation byte', Buffer.from([0x80])],
  ])('refuses %s in MAIL FROM and RCPT TO with 501 5.5.4, with or without SMTPUTF8', async (_name, bytes) => {
    const c = await session();
    expect(await raw(c, 'MAIL FROM:<a', bytes, '@remote.test> SMTPUTF8')).toMatch(/^501 5\.5\.4 /);
    expect(await raw(c, 'MAIL FROM:<a', bytes, '@remote.test>')).toMatch(/^501 5\.5\.4 /);
    // In a domain some bad bytes decode to characters a domain cannot hold: smtp-server's own 501 5.1.7.
    expect(await raw(c, 'MAIL FROM:<a@remote', bytes, '.test> SMTPUTF8')).toMatch(/^501 5\.(5\.4|1\.7) /);
    expect(await c.command('MAIL FROM:<a@remote.test> SMTPUTF8')).toMatch(/^250 /);
    expect(await raw(c, 'RCPT TO:<u', bytes, '@alpha.test>')).toMatch(/^501 5\.5\.4 /);
    expect(await c.command('RCPT TO:<user@alpha.test>')).toMatch(/^250 /);
    c.close();
  });

  it('refuses 8-bit addresses without SMTPUTF8 with 553 5.6.7 and takes them with it', async () => {
    const c = await session();
    expect(await raw(c, 'MAIL FROM:<', U_UMLAUT, 'ser@remote.test>')).toMatch(/^553 5\.6\.7 /);
    expect(await raw(c, 'MAIL FROM:<user@b', U_UMLAUT, 'cher.test>')).toMatch(/^553 5\.6\.7 /);
    // A refused MAIL FROM's SMTPUTF8 does not carry over to the next one.
    expect(await raw(c, 'MAIL FROM:<a', BAD, '@remote.test> SMTPUTF8')).toMatch(/^501 5\.5\.4 /);
    expect(await raw(c, 'MAIL FROM:<', U_UMLAUT, 'ser@remote.test>')).toMatch(/^553 5\.6\.7 /);
    // The A-label of the same domain is ASCII, and fine without SMTPUTF8.
    expect(await c.command('MAIL FROM:<user@xn--bcher-kva.test>')).toMatch(/^250 /);
    expect(await raw(c, 'RCPT TO:<', U_UMLAUT, 'ser@alpha.test>')).toMatch(/^553 5\.6\.7 /);
    expect(await c.command('RSET')).toMatch(/^250/);
    expect(await raw(c, 'MAIL FROM:<', U_UMLAUT, 'ser@remote.test> SMTPUTF8')).toMatch(/^250 /);
    expect(await raw(c, 'RCPT TO:<', U_UMLAUT, 'ser@alpha.test>')).toMatch(/^250 /);
    c.close();
  });

  it('keeps no parameter of a refused MAIL FROM for the next transaction', async () => {
    const c = await session();
    expect(await raw(c, 'MAIL FROM:<a', BAD, '@remote.test> SMTPUTF8 BODY=8BITMIME RET=HDRS ENVID=refused')).toMatch(/^501 5\.5\.4 /);
    expect(await c.command('MAIL FROM:<a@remote.test>')).toMatch(/^250 /);
    expect(await c.command('RCPT TO:<user@alpha.test>')).toMatch(/^250 /);
    expect(await c.command('DATA')).toMatch(/^354/);
    const id = await c.finishData('Subject: plain\r\n\r\nascii\r\n');
    c.close();
    expect(t.app.queue.store.message(id)).toMatchObject({ smtputf8: 0, body8bit: 0, ret: null, envid: null });
  });

  it('refuses NUL in message data with 550 5.6.0 unless limits.allowNul', async () => {
    const message = Buffer.from('Subject: nul\r\n\r\nbefore\0after\r\n.\r\n', 'latin1');
    const c = await RawSmtp.atData(t.port('mx'), 'a@remote.test', ['user@alpha.test']);
    c.send(message);
    expect((await c.reply()).join('\n')).toMatch(/^550 5\.6\.0 /);
    c.close();
    const d = await RawSmtp.atData(lenient.port('mx'), 'a@remote.test', ['user@alpha.test']);
    d.send(message);
    expect((await d.reply()).join('\n')).toMatch(/^250 /);
    d.close();
  });

  it('the transparent proxy refuses the same addresses instead of passing them on', async () => {
    const mx = await startSink({ host: '127.0.0.52' });
    const p = await startApp((dir) => baseConfig(dir, {
      listeners: [{ name: 'proxy', role: 'proxy', port: 0, tls: 'none' }],
      trustedNetworks: ['127.0.0.1/32'],
    }), { originalDst: () => ({ address: mx.host, port: mx.port, family: 4 }) });
    try {
      const c = await RawSmtp.open(p.port('proxy'));
      await c.reply();
      expect(await c.command('EHLO legacy.test')).toMatch(/^250/);
      expect(await raw(c, 'MAIL FROM:<a', BAD, '@legacy.test> SMTPUTF8')).toMatch(/^501 5\.5\.4 /);
      expect(await raw(c, 'MAIL FROM:<', U_UMLAUT, 'ser@legacy.test>')).toMatch(/^553 5\.6\.7 /);
      expect(await c.command('MAIL FROM:<a@legacy.test>')).toMatch(/^250 /);
      expect(await raw(c, 'RCPT TO:<u', OVERLONG, '@dest.test>')).toMatch(/^501 5\.5\.4 /);
      expect(await raw(c, 'RCPT TO:<', U_UMLAUT, 'ser@dest.test>')).toMatch(/^553 5\.6\.7 /);
      expect(await c.command('RCPT TO:<user@dest.test>')).toMatch(/^250 /);
      expect(await c.command('QUIT')).toMatch(/^221/);
      c.close();
      expect(mx.messages).toEqual([]);
    } finally {
      await p.stop();
      await mx.close();
    }
  });
});
