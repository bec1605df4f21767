// AUTH against a real Dovecot's auth service (a private instance, users in a passwd-file): the right
// password is 235 and the mail goes under the tenant of the login's domain, a wrong one 535, the
// guard's penalties and blocks still apply, and an unreachable Dovecot is 454 4.7.0.
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { baseConfig, startApp, type TestApp } from './helpers/app.js';
import { dovecotSupport, startDovecot, type TestDovecot } from './helpers/dovecot.js';
import { RawSmtp } from './helpers/raw-smtp.js';
import { authPlain, submissionSession } from './helpers/submission.js';

const support = dovecotSupport();
const b64 = (s: string) => Buffer.from(s).toString('base64');
const plain = authPlain;
const submission = submissionSession;

/** MAIL, RCPT, DATA on an authenticated session: the queue id. */
async function send(c: RawSmtp, from: string): Promise<string> {
  expect(await c.command(`MAIL FROM:<${from}>`)).toMatch(/^250 /);
  expect(await c.command('RCPT TO:<friend@far.test>')).toMatch(/^250 /);
  expect(await c.command('DATA')).toMatch(/^354/);
  return c.finishData(`From: <${from}>\r\nSubject: hi\r\n\r\nhello\r\n`);
}

describe.skipIf(!support.ok)(`AUTH with Dovecot${support.ok ? '' : ` (skipped: ${support.reason})`}`, () => {
  let dovecot: TestDovecot;
  let t: TestApp | undefined;
  beforeAll(async () => { dovecot = await startDovecot({ 'ann@alpha.test': 'ann-secret', 'bo@beta.test': 'bo-secret' }); });
  afterAll(async () => { await dovecot?.stop(); });
  afterEach(async () => { await t?.stop(); t = undefined; });

  const start = (socket: string, auth: Record<string, unknown> = {}, tenant: Record<string, unknown> = { tenant: 'alpha' }) => startApp((dir) => baseConfig(dir, {
    tenants: { alpha: { domains: ['alpha.test'] }, beta: { domains: ['beta.test'] } },
    routes: { 'far.test': { hold: true } },
    auth: { failureDelay: '50ms', maxDelay: '100ms', ...auth, backend: { type: 'dovecot', socket, domains: { 'beta.test': 'beta' }, ...tenant } },
  }));

  it('the right password (PLAIN or LOGIN) is 235 and the mail goes under the login\'s tenant; a wrong one is 535', async () => {
    t = await start(dovecot.authSocket);
    const c = await submission(t);
    expect(await c.command(plain('ann@alpha.test', 'wrong'))).toMatch(/^535 5\.7\.8 /);
    expect(await c.command(plain('ann@alpha.test', 'ann-secret'))).toMatch(/^235 /);
    const id = await send(c, 'ann@alpha.test');
    expect(t.app.queue.store.recipientsOf(id).map((r) => r.tenant)).toEqual(['alpha']);
    c.close();

    const d = await submission(t);
    expect(await d.command('AUTH LOGIN')).toMatch(/^334 /);
    expect(await d.command(b64('bo@beta.test'))).toMatch(/^334 /);
    expect(await d.command(b64('bo-secret'))).toMatch(/^235 /);
    const id2 = await send(d, 'bo@beta.test');
    expect(t.app.queue.store.recipientsOf(id2).map((r) => r.tenant)).toEqual(['beta']);
    d.close();
  });

  it('an unknown login is 535, and the guard blocks the address after maxFailures whatever Dovecot would say', async () => {
    t = await start(dovecot.authSocket, { maxFailures: 2, sessionFailures: 5, block: '1m' });
    const c = await submission(t);
    expect(await c.command(plain('nobody@alpha.test', 'x'))).toMatch(/^535 5\.7\.8 /);
    expect(await c.command(plain('ann@alpha.test', 'x'))).toMatch(/^535 5\.7\.8 /);
    // The address has failed twice: blocked, so even the right password is not checked.
    expect(await c.command(plain('ann@alpha.test', 'ann-secret'))).toMatch(/^454 4\.7\.0 /);
    c.close();
  });

  it('Dovecot unreachable is 454 4.7.0', async () => {
    t = await start(`${dovecot.dir}/no-such-socket`);
    const c = await submission(t);
    expect(await c.command(plain('ann@alpha.test', 'ann-secret'))).toBe('454 4.7.0 temporary authentication failure, try again later');
    expect(t.logs.some((l) => l.msg === 'password check failed')).toBe(true);
    c.close();
  });

  it('Dovecot stopped after a login is 454 4.7.0 for the next one', async () => {
    const own = await startDovecot({ 'ann@alpha.test': 'ann-secret' });
    try {
      t = await start(own.authSocket);
      const c = await submission(t);
      expect(await c.command(plain('ann@alpha.test', 'ann-secret'))).toMatch(/^235 /);
      c.close();
      await own.stop();
      const d = await submission(t);
      expect(await d.command(plain('ann@alpha.test', 'ann-secret'))).toMatch(/^454 4\.7\.0 /);
      d.close();
    } finally {
      await own.stop();
    }
  });

  it('a login Dovecot accepts but no tenant claims is refused with 535, and the operator is told', async () => {
    t = await start(dovecot.authSocket, {}, {});
    const c = await submission(t);
    expect(await c.command(plain('ann@alpha.test', 'ann-secret'))).toMatch(/^535 5\.7\.8 /);
    expect(await c.command(plain('bo@beta.test', 'bo-secret'))).toMatch(/^235 /);
    expect(t.logs.some((l) => typeof l.msg === 'string' && l.msg.startsWith('Dovecot accepted a login whose tenant is not configured'))).toBe(true);
    c.close();
  });
});
