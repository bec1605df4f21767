/*
 * A submission client over a raw socket: greeted, EHLO, STARTTLS, EHLO again — ready for AUTH.
 *
 * Takes: the app, the client's own address (127.0.0.x). Gives: the session; `authPlain`, the AUTH PLAIN line.
 */
import { expect } from 'vitest';
import type { TestApp } from './app.js';
import { RawSmtp } from './raw-smtp.js';

export const authPlain = (user: string, password: string) => 'AUTH PLAIN ' + Buffer.from(`\0${user}\0${password}`).toString('base64');

export async function submissionSession(t: TestApp, from = '127.0.0.1'): Promise<RawSmtp> {
  const c = await RawSmtp.open(t.port('submission'), '127.0.0.1', from);
  expect((await c.reply())[0]).toMatch(/^220 /);
  expect(await c.command('EHLO client.test')).toMatch(/^250/);
  expect(await c.command('STARTTLS')).toMatch(/^220 /);
  await c.startTls();
  expect(await c.command('EHLO client.test')).toMatch(/^250/);
  return c;
}
