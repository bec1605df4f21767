/*
 * Storage scenarios' common ground: a tenant alpha (alpha.test) whose mail is held, so what was
 * accepted stays in the spool; one message sent by raw SMTP with its final reply returned whatever
 * it is; the spool's message files listed.
 *
 * Takes: a data folder, a listener port. Gives: heldConfig(), sendOne(), spoolFiles().
 */
import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { baseConfig, type ConfigInput } from './app.js';
import { RawSmtp } from './raw-smtp.js';

/** baseConfig with tenant alpha (alpha.test), its mail held in the queue, and `extra` on top. */
export const heldConfig = (dir: string, extra: Partial<ConfigInput> = {}) => baseConfig(dir, {
  tenants: { alpha: { domains: ['alpha.test'] } },
  routes: { 'alpha.test': { hold: true } },
  ...extra,
});

/** One message from x@remote.test to ann@alpha.test; resolves with the reply to its final dot. */
export async function sendOne(port: number, body: string): Promise<string> {
  const c = await RawSmtp.open(port);
  await c.reply();
  await c.command('EHLO client.test');
  await c.command('MAIL FROM:<x@remote.test>');
  await c.command('RCPT TO:<ann@alpha.test>');
  await c.command('DATA');
  c.send(`Subject: storage\r\n\r\n${body}\r\n.\r\n`);
  const reply = (await c.reply()).join('\n');
  await c.command('QUIT');
  c.close();
  return reply;
}

/** The message files in the data folder's spool (not the corrupt/ folder). */
export const spoolFiles = async (dir: string) => (await readdir(join(dir, 'spool'), { withFileTypes: true })).filter((e) => e.isFile()).map((e) => e.name);
