/*
 * Continuous SMTP traffic for the length of a test: `senders` loops, each sending one message
 * per connection with nodemailer until stopped, every message with a unique subject so the sink
 * can tell which arrived. Every outcome is kept: accepted (with its queue id), refused with a
 * 4xx, refused with a 5xx, or failed at the connection level.
 */
import nodemailer from 'nodemailer';

export interface Sent {
  n: number;
  subject: string;
  at: number;
  ms: number;
  code: number | null;
  reply: string;
  qid: string | null;
}

export interface Load {
  sent: Sent[];
  stop(): Promise<Sent[]>;
}

export function startLoad(port: number, opts: { senders?: number; to?: string; body?: (n: number) => string } = {}): Load {
  const sent: Sent[] = [];
  let running = true;
  let n = 0;
  const loop = async () => {
    while (running) {
      const i = n++;
      const subject = `load-${i}`;
      const tx = nodemailer.createTransport({ host: '127.0.0.1', port, ignoreTLS: true, connectionTimeout: 10_000, socketTimeout: 30_000 });
      const t0 = performance.now();
      try {
        const info = await tx.sendMail({
          envelope: { from: 'load@sender.test', to: [opts.to ?? 'bob@example.test'] },
          raw: `From: <load@sender.test>\r\nTo: <${opts.to ?? 'bob@example.test'}>\r\nSubject: ${subject}\r\nMessage-ID: <${subject}@sender.test>\r\n\r\n${opts.body?.(i) ?? 'steady traffic'}\r\n`,
        });
        sent.push({ n: i, subject, at: Date.now(), ms: performance.now() - t0, code: 250, reply: info.response, qid: info.response.split(' ').pop() ?? null });
      } catch (err) {
        const e = err as { responseCode?: number; response?: string; message: string };
        sent.push({ n: i, subject, at: Date.now(), ms: performance.now() - t0, code: e.responseCode ?? null, reply: e.response ?? e.message, qid: null });
      } finally {
        tx.close();
      }
    }
  };
  const loops = Array.from({ length: opts.senders ?? 4 }, loop);
  return {
    sent,
    async stop() {
      running = false;
      await Promise.all(loops);
      return sent;
    },
  };
}
