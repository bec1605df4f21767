/*
 * Structured JSON logs (pino) on stdout, one line per event, with the queue id (`qid`) wherever a
 * message is concerned so a message's whole story can be found with one grep.
 *
 * The lines an operator follows a message or a session by (the fields named):
 *   started            version, config (the file), generation (of the config snapshot)
 *   connect            listener, session, client: a client connected (smtp-server's session id)
 *   tls                listener, session, protocol, cipher: STARTTLS or implicit TLS is up
 *   authenticated      listener, session, client, user
 *   queued             qid, session, messageId (the Message-ID header field), sender, size …
 *   disconnect         listener, session, client
 *   outbound session   qid, tenant, site, host, address (the IP connected to), protocol, cipher,
 *                      session (the stored transcript's id, when transcripts are on)
 *   delivery attempt   qid, rcpt, verdict, reply, host ("name[IP]:port" of the MX), session (the
 *                      transcript's id), next (a deferral's next attempt, ISO 8601)
 *
 * stdout suits journald (a systemd unit's default). With `log.file` the lines are appended to that
 * file instead, and `reopen` (the process calls it on SIGUSR2) opens the file again under its name:
 * logrotate renames the file, then signals, and no line is lost or copied (no copytruncate).
 * Lines leave in batches (`BATCHED`): one write when 4 KB have gathered, or within 100 ms of the
 * first, not one write per line (a busy proxy logs a line per transaction); what is waiting is
 * written when the process exits, and to the old file before a reopen.
 * Settings: log.level, log.file.
 */
import { closeSync, mkdirSync, openSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import pino, { type DestinationStream, type Logger } from 'pino';
import { packageRoot } from './mta-package.js';

/** A write per 4 KB of lines, or 100 ms after a line at the latest. */
const BATCHED = { minLength: 4096, periodicFlush: 100 } as const;

export function createLogger(level: string, destination?: DestinationStream | NodeJS.WritableStream): Logger {
  return pino({ level, base: { service: 'ichidan' }, timestamp: pino.stdTimeFunctions.isoTime }, destination ?? pino.destination({ sync: false, ...BATCHED }));
}

/**
 * The process's logger, on `file` when given (created if missing, appended to), else on stdout.
 * A file that cannot be opened throws here, at start, rather than later in the background.
 */
export function createProcessLogger(settings: { level: string; file?: string }): { log: Logger; reopen: () => void } {
  if (settings.file === undefined) return { log: createLogger(settings.level), reopen: () => {} };
  mkdirSync(dirname(settings.file), { recursive: true });
  closeSync(openSync(settings.file, 'a', 0o640));
  const destination = pino.destination({ dest: settings.file, append: true, mkdir: true, sync: false, ...BATCHED });
  return { log: createLogger(settings.level, destination), reopen: () => reopenAfterFlush(destination as unknown as Reopenable) };
}

/** What `reopenAfterFlush` uses of pino's file destination (sonic-boom): `_writing` is its own flag for a write under way. */
export interface Reopenable {
  _writing: boolean;
  flush(cb: (err?: Error) => void): void;
  flushSync(): void;
  reopen(): void;
}

/**
 * The lines still waiting in the batch were logged before the rename: they go to the old file
 * first, then the file is opened anew under its name. A flush ends at a drain, which may leave
 * lines gathered (fewer than a batch), and a periodic write may have begun before its callback:
 * once nothing is being written, what is gathered is written at once, then the file reopened.
 */
export function reopenAfterFlush(destination: Reopenable): void {
  destination.flush(() => {
    if (destination._writing) return reopenAfterFlush(destination);
    try {
      destination.flushSync();
    } catch {
      // Not open yet (or the write failed, which the destination reports itself): nothing is lost by reopening.
    }
    destination.reopen();
  });
}

/** The version in the package's package.json (mta-package.ts finds it, from dist/ too). */
export function packageVersion(): string {
  const root = packageRoot();
  if (root === null) return 'unknown';
  return (JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as { version?: string }).version ?? 'unknown';
}

export type { Logger };
