// Ingress limits (helpers/ingress-app.ts): 452 4.5.3 past limits.maxRecipients, 552 5.3.4 for a SIZE
// or a body past limits.maxMessageSize (RFC 1870), the session usable afterwards.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type TestApp } from './helpers/app.js';
import { startIngress, type Ingress } from './helpers/ingress-app.js';

describe('SMTP ingress: recipient and size limits', () => {
  let ingress: Ingress;
  let t: TestApp;
  let session: Ingress['session'];

  beforeAll(async () => {
    ingress = await startIngress();
    ({ t, session } = ingress);
  });
  afterAll(async () => { await ingress?.stop(); });

  it('answers 452 4.5.3 beyond the recipient limit, and accepts the first ones', async () => {
    const c = await session();
    await c.command('EHLO client.test');
    await c.command('MAIL FROM:<x@remote.test>');
    for (const n of [1, 2, 3]) expect(await c.command(`RCPT TO:<r${n}@alpha.test>`)).toMatch(/^250/);
    expect(await c.command('RCPT TO:<r4@alpha.test>')).toMatch(/^452 4\.5\.3 too many recipients/);
    c.close();
  });

  it('refuses an oversized SIZE at MAIL FROM and an oversized body at the end of DATA', async () => {
    const c = await session();
    await c.command('EHLO client.test');
    expect(await c.command('MAIL FROM:<x@remote.test> SIZE=999999999')).toMatch(/^552 5\.3\.4 /);
    expect(await c.command('MAIL FROM:<x@remote.test>')).toMatch(/^250/);
    expect(await c.command('RCPT TO:<big@alpha.test>')).toMatch(/^250/);
    expect(await c.command('DATA')).toMatch(/^354/);
    const line = 'x'.repeat(998) + '\r\n';
    for (let i = 0; i < 200; i++) c.send(line); // ~200 KB, over the 64 KB limit
    c.send('.\r\n');
    expect((await c.reply()).join('\n')).toMatch(/^552 5\.3\.4 /);
    // The session stays usable and nothing was queued.
    expect(await c.command('NOOP')).toMatch(/^250/);
    c.close();
    expect(t.app.queue.store.allMessages().filter((m) => m.state === 'active')).toHaveLength(0);
  });
});
