/*
 * One raw message through a listener with nodemailer, for scenarios about what the daemon answers:
 * the reply comes back as data whether the message was taken or refused.
 *
 * Takes: the TestApp, the raw message, the envelope (default alice@sender.test → bob@example.test).
 * Gives: { ok, reply } with the listener's final reply line; qidOf() the queue id in a 250 reply.
 */
import nodemailer from 'nodemailer';
import type { TestApp } from './app.js';

export async function sendRaw(t: TestApp, raw: string, envelope: { from?: string; to?: string } = {}): Promise<{ ok: boolean; reply: string }> {
  const tx = nodemailer.createTransport({ host: '127.0.0.1', port: t.port('mx'), ignoreTLS: true });
  try {
    const info = await tx.sendMail({ envelope: { from: envelope.from ?? 'alice@sender.test', to: [envelope.to ?? 'bob@example.test'] }, raw });
    return { ok: true, reply: info.response };
  } catch (err) {
    return { ok: false, reply: (err as { response?: string }).response ?? String(err) };
  } finally {
    tx.close();
  }
}

/** The queue id at the end of "250 2.0.0 Ok: queued as <id>". */
export const qidOf = (reply: string) => reply.split(' ').pop()!;
