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
 */
import { readFileSync, existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import pino, { type Logger } from 'pino';

export function createLogger(level: string, destination?: NodeJS.WritableStream): Logger {
  return pino({ level, base: { service: 'ichidan' }, timestamp: pino.stdTimeFunctions.isoTime }, destination ?? pino.destination({ sync: false }));
}

/** The version in the package's package.json (the nearest one above this file, from dist/ too). */
export function packageVersion(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  while (!existsSync(join(dir, 'package.json'))) {
    const parent = dirname(dir);
    if (parent === dir) return 'unknown';
    dir = parent;
  }
  return (JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8')) as { version?: string }).version ?? 'unknown';
}

export type { Logger };
