/*
 * Load for the crash tests: SMTP sessions on raw sockets that keep sending messages until told to
 * stop, recording each one the server acknowledged with 250.
 *
 * Takes: the listener's port, how many sessions, a stop flag, and the message text for a token
 *   (each message's recipient is `<token>@far.test`).
 * Gives: `sent` (messages whose MAIL FROM was sent) and `acknowledged` (token → queue id from the
 *   250 reply). A session whose server is killed under it ends quietly: what was not acknowledged
 *   may be lost, and that is what the tests check.
 */
import { RawSmtp } from './raw-smtp.js';

export class CrashLoad {
  sent = 0;
  readonly acknowledged = new Map<string, string>();
  #seq = 0;

  constructor(private readonly message: (token: string) => string) {}

  /** `sessions` sessions until `until.stop`; resolves once all of them have ended. */
  run(port: number, sessions: number, until: { stop: boolean }): Promise<void[]> {
    return Promise.all(Array.from({ length: sessions }, () => this.#session(port, until)));
  }

  async #session(port: number, until: { stop: boolean }): Promise<void> {
    while (!until.stop) {
      let c: RawSmtp;
      try {
        c = await RawSmtp.open(port);
        await c.reply(2000);
      } catch {
        return;
      }
      try {
        await c.command('EHLO load.test');
        for (let i = 0; i < 5 && !until.stop; i++) {
          const token = `t${++this.#seq}`;
          this.sent++;
          if (!/^250/.test(await c.command('MAIL FROM:<load@sender.test>'))) break;
          if (!/^250/.test(await c.command(`RCPT TO:<${token}@far.test>`))) break;
          if (!/^354/.test(await c.command('DATA'))) break;
          c.send(`${this.message(token)}.\r\n`);
          const reply = (await c.reply(5000)).join('\n');
          if (/^250 /.test(reply)) this.acknowledged.set(token, reply.split(' ').pop()!);
        }
        await c.command('QUIT');
      } catch {
        // killed mid-session
      } finally {
        c.close();
      }
    }
  }
}
