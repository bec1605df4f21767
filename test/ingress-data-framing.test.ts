// DATA framing at the ingress (helpers/ingress-app.ts): no bare CR or LF form of the final dot ends
// the data (SMTP smuggling), dot-stuffing is undone, and DSN parameters (RFC 3461) are passed on.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startIngress, type Ingress } from './helpers/ingress-app.js';
import type { Sink } from './helpers/sink.js';

describe('SMTP ingress: end of data', () => {
  let ingress: Ingress;
  let mailbox: Sink;
  let session: Ingress['session'];

  beforeAll(async () => {
    ingress = await startIngress();
    ({ mailbox, session } = ingress);
  });
  afterAll(async () => { await ingress?.stop(); });

  const smuggling: Array<[string, string]> = [
    ['LF.LF', '\n.\n'],
    ['CR.CR', '\r.\r'],
    ['CRLF.LF', '\r\n.\n'],
    ['LF.CRLF', '\n.\r\n'],
    ['CR.CRLF', '\r.\r\n'],
    ['CRLF.CR', '\r\n.\r'],
    ['LF.CR', '\n.\r'],
  ];
  for (const [name, ending] of smuggling) {
    it(`never reads ${name} as an end of data (SMTP smuggling)`, async () => {
      const before = mailbox.messages.length;
      const c = await session();
      await c.command('EHLO client.test');
      await c.command('MAIL FROM:<x@remote.test>');
      await c.command('RCPT TO:<ann@alpha.test>');
      expect(await c.command('DATA')).toMatch(/^354/);
      c.send(`Subject: first\r\n\r\nbody${ending}MAIL FROM:<smuggled@evil.test>\r\nRCPT TO:<ann@alpha.test>\r\nDATA\r\nSubject: smuggled\r\n\r\nsecond\r\n.\r\n`);
      const replies = [(await c.reply()).join('\n')];
      replies.push(await c.command('NOOP'));
      expect(replies[0]).toMatch(/^550 5\.6\.0 .*bare CR or LF/);
      expect(replies[1]).toMatch(/^250 /);
      expect(await c.drain(200)).toBe('');
      await c.command('QUIT');
      await new Promise((r) => setTimeout(r, 300));
      expect(mailbox.messages.length).toBe(before);
      expect(mailbox.messages.some((m) => m.data.includes('smuggled'))).toBe(false);
    });
  }

  it('accepts dot-stuffed lines and a body that ends right at CRLF.CRLF', async () => {
    const before = mailbox.messages.length;
    const c = await session();
    await c.command('EHLO client.test');
    await c.command('MAIL FROM:<x@remote.test> BODY=8BITMIME RET=HDRS ENVID=env-42');
    await c.command('RCPT TO:<ann@alpha.test> NOTIFY=FAILURE,DELAY ORCPT=rfc822;ann@alpha.test');
    await c.command('DATA');
    c.send('Subject: dots\r\n\r\n..one\r\n...two\r\n.\r\n');
    expect((await c.reply())[0]).toMatch(/^250 2\.0\.0 Ok: queued as /);
    c.close();
    const got = await mailbox.waitFor(before + 1);
    expect(got.at(-1)!.data.toString()).toMatch(/Subject: dots\r\n\r\n\.one\r\n\.\.two\r\n$/);
    // DSN parameters are stored and passed on to the next hop.
    expect(got.at(-1)!.params).toMatchObject({ RET: 'HDRS', ENVID: 'env-42', BODY: '8BITMIME' });
    expect(got.at(-1)!.rcptParams[0]).toMatchObject({ NOTIFY: 'FAILURE,DELAY' });
  });
});
