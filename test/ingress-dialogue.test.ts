// The ingress dialogue over raw sockets (helpers/ingress-app.ts): the golden EHLO of each listener
// (test/golden/ehlo.json), AUTH only after STARTTLS on submission, and commands pipelined in
// plaintext before STARTTLS discarded (CVE-2011-0411).
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TEST_PASSWORD } from './helpers/app.js';
import { startIngress, type Ingress } from './helpers/ingress-app.js';

describe('SMTP ingress: EHLO and STARTTLS', () => {
  let ingress: Ingress;
  let session: Ingress['session'];

  beforeAll(async () => {
    ingress = await startIngress();
    ({ session } = ingress);
  });
  afterAll(async () => { await ingress?.stop(); });

  it('matches the golden EHLO dialogue of each listener', async () => {
    const golden = JSON.parse(await readFile(join(import.meta.dirname, 'golden', 'ehlo.json'), 'utf8'));
    const mx = await session('mx');
    expect((await mx.command('EHLO client.test')).split('\n')).toEqual(golden.mx);
    await mx.command('QUIT');
    const sub = await session('submission');
    expect((await sub.command('EHLO client.test')).split('\n')).toEqual(golden.submissionPlain);
    // AUTH is not offered, and refused, before TLS
    expect(await sub.command('AUTH PLAIN ' + Buffer.from(`\0ann@alpha.test\0${TEST_PASSWORD}`).toString('base64'))).toMatch(/^5(00|02|03|30|38) /);
    expect(await sub.command('STARTTLS')).toMatch(/^220 /);
    await sub.startTls();
    expect((await sub.command('EHLO client.test')).split('\n')).toEqual(golden.submissionTls);
    sub.close();
  });

  it('discards commands pipelined in plaintext before STARTTLS (CVE-2011-0411)', async () => {
    const c = await session();
    await c.command('EHLO client.test');
    c.send('STARTTLS\r\nMAIL FROM:<injected@evil.test>\r\nRCPT TO:<victim@alpha.test>\r\n');
    expect((await c.reply())[0]).toMatch(/^220 /);
    await c.startTls();
    await c.command('EHLO client.test');
    // Had the injected MAIL been run, this RCPT would be accepted.
    expect(await c.command('RCPT TO:<victim@alpha.test>')).toMatch(/^503 /);
    c.close();
  });
});
