/*
 * Clients of the per-client limits scenarios: raw connections from chosen 127.0.0.x addresses to an
 * Ichidan whose tenant alpha's mail is held (helpers/held-mail.ts), every connection closed after
 * each test.
 *
 * Takes: a getter for the file's current TestApp. Gives: start(), connect() (with its greeting),
 * atData() (a transaction up to DATA's 354), slotsFree(), the open connections and closeAll().
 */
import { expect } from 'vitest';
import { startApp, type ConfigInput, type TestApp } from './app.js';
import { heldConfig } from './held-mail.js';
import { RawSmtp } from './raw-smtp.js';

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export function edgeClients(app: () => TestApp | undefined) {
  const open: RawSmtp[] = [];

  const start = (extra: Partial<ConfigInput>) => startApp((dir) => heldConfig(dir, extra));

  async function connect(from: string): Promise<{ c: RawSmtp; greeting: string }> {
    const c = await RawSmtp.open(app()!.port('mx'), '127.0.0.1', from);
    open.push(c);
    return { c, greeting: (await c.reply()).join('\n') };
  }

  async function atData(from: string): Promise<RawSmtp> {
    const { c, greeting } = await connect(from);
    expect(greeting).toMatch(/^220 /);
    for (const line of ['EHLO client.test', 'MAIL FROM:<a@remote.test>', 'RCPT TO:<user@alpha.test>', 'DATA']) expect(await c.command(line)).toMatch(/^[23]/);
    return c;
  }

  /** `limit` new connections from `from` are greeted and the next one is refused: every slot is free again. */
  async function slotsFree(from: string, limit: number): Promise<void> {
    const fresh: RawSmtp[] = [];
    for (let i = 0; i < limit; i++) {
      const { c, greeting } = await connect(from);
      expect(greeting).toMatch(/^220 /);
      fresh.push(c);
    }
    expect((await connect(from)).greeting).toMatch(/^421 4\.7\.0 /);
    for (const c of fresh) c.close();
    await sleep(200);
  }

  function closeAll(): void {
    for (const c of open.splice(0)) c.close();
  }

  return { open, start, connect, atData, slotsFree, closeAll };
}
