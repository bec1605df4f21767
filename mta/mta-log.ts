/*
 * Structured JSON logs (pino) on stdout, one line per event, with the queue id (`qid`) wherever a
 * message is concerned so a message's whole story can be found with one grep.
 *
 * stdout suits journald (a systemd unit's default). With `log.file` the lines are appended to that
 * file instead, and `reopen` (the process calls it on SIGUSR2) opens the file again under its name:
 * logrotate renames the file, then signals, and no line is lost or copied (no copytruncate).
 * Settings: log.level, log.file.
 */
import { closeSync, mkdirSync, openSync } from 'node:fs';
import { dirname } from 'node:path';
import pino, { type DestinationStream, type Logger } from 'pino';

export function createLogger(level: string, destination?: DestinationStream | NodeJS.WritableStream): Logger {
  return pino({ level, base: { service: 'ichidan' }, timestamp: pino.stdTimeFunctions.isoTime }, destination ?? pino.destination({ sync: false }));
}

/**
 * The process's logger, on `file` when given (created if missing, appended to), else on stdout.
 * A file that cannot be opened throws here, at start, rather than later in the background.
 */
export function createProcessLogger(settings: { level: string; file?: string }): { log: Logger; reopen: () => void } {
  if (settings.file === undefined) return { log: createLogger(settings.level), reopen: () => {} };
  mkdirSync(dirname(settings.file), { recursive: true });
  closeSync(openSync(settings.file, 'a', 0o640));
  const destination = pino.destination({ dest: settings.file, append: true, mkdir: true, sync: false });
  return { log: createLogger(settings.level, destination), reopen: () => destination.reopen() };
}

export type { Logger };
