/*
 * Sink SMTP servers for tests: real smtp-server instances on 127.0.0.x that record every message
 * they accept, and whose answers a test scripts per recipient and per attempt (4xx then 2xx, 5xx,
 * a refused DATA), so retries and bounces can be driven over real sockets.
 */
import { SMTPServer, type SMTPServerOptions } from 'smtp-server';

export interface SunkMessage {
  mailFrom: string;
  rcptTo: string[];
  data: Buffer;
  secure: boolean;
  params: Record<string, unknown>;
  rcptParams: Array<Record<string, unknown>>;
}

/** What the sink answers to RCPT TO for an address on attempt n (1-based); undefined means 250. */
export type RcptScript = (address: string, attempt: number) => { code: number; text: string } | undefined;

export interface Sink {
  host: string;
  port: number;
  messages: SunkMessage[];
  rcptAttempts: Map<string, number>;
  waitFor(count: number, timeoutMs?: number): Promise<SunkMessage[]>;
  close(): Promise<void>;
}

export interface SinkOptions {
  host?: string;
  port?: number;
  rcpt?: RcptScript;
  data?: (attempt: number) => { code: number; text: string } | undefined;
  lmtp?: boolean;
  /** LMTP only: the DATA answer for each recipient (undefined = 250). */
  lmtpData?: (address: string, attempt: number) => { code: number; text: string } | undefined;
  /** Advertised SIZE limit. */
  size?: number;
  /** PEM key and certificate offered after STARTTLS (default: smtp-server's built-in self-signed pair). */
  key?: string;
  cert?: string;
  /** Neither offer nor accept STARTTLS. */
  hideStartTls?: boolean;
}

export async function startSink(opts: SinkOptions = {}): Promise<Sink> {
  const host = opts.host ?? '127.0.0.1';
  const messages: SunkMessage[] = [];
  const rcptAttempts = new Map<string, number>();
  let dataAttempts = 0;
  const waiters: Array<() => void> = [];
  const options: SMTPServerOptions & { greetingDelay: number } = {
    disableReverseLookup: true,
    authOptional: true,
    hideENHANCEDSTATUSCODES: false,
    hideDSN: false,
    lmtp: opts.lmtp ?? false,
    size: opts.size,
    logger: false,
    greetingDelay: 0,
    ...(opts.key && opts.cert ? { key: opts.key, cert: opts.cert } : {}),
    ...(opts.hideStartTls ? { hideSTARTTLS: true, disabledCommands: ['STARTTLS'] } : {}),
    onRcptTo(address, _session, cb) {
      const n = (rcptAttempts.get(address.address) ?? 0) + 1;
      rcptAttempts.set(address.address, n);
      const r = opts.rcpt?.(address.address, n);
      if (r) {
        const err = new Error(r.text) as Error & { responseCode: number };
        err.responseCode = r.code;
        return cb(err);
      }
      cb();
    },
    onData(stream, session, cb) {
      const chunks: Buffer[] = [];
      stream.on('data', (c: Buffer) => chunks.push(c));
      stream.on('end', () => {
        dataAttempts++;
        const perRecipient: Array<string | Error> = [];
        const r = opts.data?.(dataAttempts);
        if (r) {
          const err = new Error(r.text) as Error & { responseCode: number };
          err.responseCode = r.code;
          return cb(err);
        }
        const delivered = session.envelope.rcptTo.filter((r) => {
          const answer = opts.lmtpData?.(r.address, dataAttempts);
          perRecipient.push(answer ? Object.assign(new Error(answer.text), { responseCode: answer.code }) : `2.0.0 <${r.address}> delivered`);
          return !answer;
        });
        messages.push({
          mailFrom: session.envelope.mailFrom ? session.envelope.mailFrom.address : '',
          rcptTo: delivered.map((r) => r.address),
          data: Buffer.concat(chunks),
          secure: session.secure,
          params: (session.envelope.mailFrom && session.envelope.mailFrom.args) || {},
          rcptParams: session.envelope.rcptTo.map((r) => (r.args || {}) as Record<string, unknown>),
        });
        for (const w of waiters.splice(0)) w();
        if (opts.lmtp) return cb(null, perRecipient as never);
        cb(null, 'Ok: sunk');
      });
    },
  };
  const server = new SMTPServer(options);
  // Peers that die mid-session (the crash test kills Ichidan) reset connections: expected here.
  server.on('error', () => undefined);
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.port ?? 0, host, () => resolve());
  });
  const port = (server.server.address() as { port: number }).port;
  return {
    host, port, messages, rcptAttempts,
    async waitFor(count, timeoutMs = 20_000) {
      const until = Date.now() + timeoutMs;
      while (messages.length < count) {
        if (Date.now() > until) throw new Error(`sink ${host}:${port} got ${messages.length} of ${count} messages`);
        await new Promise<void>((r) => { waiters.push(r); setTimeout(r, 100); });
      }
      return messages;
    },
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}
