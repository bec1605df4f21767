/*
 * Structured JSON logs (pino) on stdout, one line per event, with the queue id (`qid`) wherever a
 * message is concerned so a message's whole story can be found with one grep.
 */
import pino, { type Logger } from 'pino';

export function createLogger(level: string, destination?: NodeJS.WritableStream): Logger {
  return pino({ level, base: { service: 'ichidan' }, timestamp: pino.stdTimeFunctions.isoTime }, destination ?? pino.destination({ sync: false }));
}

export type { Logger };
