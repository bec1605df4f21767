// Relay denial at the ingress (helpers/ingress-app.ts): every classic routing trick refused from an
// unauthenticated client, hosted domains accepted in any case; submission requires AUTH.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startIngress, type Ingress } from './helpers/ingress-app.js';

describe('SMTP ingress: relay denial', () => {
  let ingress: Ingress;
  let session: Ingress['session'];

  beforeAll(async () => {
    ingress = await startIngress();
    ({ session } = ingress);
  });
  afterAll(async () => { await ingress?.stop(); });

  it('refuses relaying and every classic routing trick from an unauthenticated client', async () => {
    const c = await session();
    expect(await c.command('EHLO client.test')).toMatch(/^250/);
    expect(await c.command('MAIL FROM:<x@remote.test>')).toMatch(/^250 2\.1\.0/);
    const battery: Array<[string, RegExp]> = [
      ['<user@other.test>', /^550 5\.7\.1 relay denied/],
      ['<user%other.test@alpha.test>', /^550 5\.7\.1 relay denied/],
      ['<other.test!user@alpha.test>', /^550 5\.7\.1 relay denied/],
      ['<@alpha.test:user@other.test>', /^550 5\.7\.1 relay denied/],
      ['<@alpha.test,@alpha.test:user@other.test>', /^550 5\.7\.1 relay denied/],
      ['<"user@other.test"@alpha.test>', /^5\d\d /],
      ['<"user%other.test"@alpha.test>', /^5\d\d /],
      ['<user@[127.0.0.1]>', /^5\d\d /],
      ['<user@other.test.>', /^5\d\d /],
      ['<user@ALPHA.test.evil.test>', /^550 5\.7\.1 relay denied/],
      ['<user@alpha.test@other.test>', /^5\d\d /],
    ];
    for (const [rcpt, expected] of battery) expect([rcpt, await c.command(`RCPT TO:${rcpt}`)]).toEqual([rcpt, expect.stringMatching(expected)]);
    // A hosted domain, in any case and with a trailing dot, is accepted.
    expect(await c.command('RCPT TO:<Ann@ALPHA.TEST>')).toMatch(/^250 2\.1\.5/);
    expect(await c.command('RSET')).toMatch(/^250/);
    c.close();
  });

  it('requires AUTH on submission for untrusted clients', async () => {
    const c = await session('submission');
    await c.command('EHLO client.test');
    expect(await c.command('MAIL FROM:<ann@alpha.test>')).toMatch(/^530 5\.7\.0 authentication required/);
    c.close();
  });
});
