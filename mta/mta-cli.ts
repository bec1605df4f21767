#!/usr/bin/env node
/*
 * The `ichidan` command.
 *
 *   ichidan start [-c FILE]          run the MTA (default config: config/default.yaml)
 *   ichidan check-config FILE        validate a config file; exit 0 if good, 1 with the problems if not
 *   ichidan hash-password [PASS]     print a bcrypt hash for `users[].password` (reads stdin without PASS)
 *   ichidan queue [-c FILE]          recipients per tenant and state, and entries set aside as corrupt
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import bcrypt from 'bcryptjs';
import Database from 'better-sqlite3';
import { queueStatus } from '../queue/queue-store-sql.js';
import { ConfigError, loadConfig } from './mta-config.js';
import { Ichidan } from './index.js';
import { createLogger } from './mta-log.js';

const USAGE = `usage:
  ichidan start [-c FILE]
  ichidan check-config FILE
  ichidan hash-password [PASSWORD]
  ichidan queue [-c FILE]`;

function configPath(args: string[]): string {
  const { values } = parseArgs({ args, options: { config: { type: 'string', short: 'c' } }, allowPositionals: false });
  return values.config ?? 'config/default.yaml';
}

function loadOrExit(file: string) {
  try {
    return loadConfig(file);
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(err.message + '\n');
      process.exit(1);
    }
    throw err;
  }
}

async function start(args: string[]): Promise<void> {
  const config = loadOrExit(configPath(args));
  const log = createLogger(config.log.level);
  const app = await Ichidan.start(config, log);
  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) return;
    stopping = true;
    log.info({ signal }, 'stopping: no new connections, finishing open transactions');
    app.stop().then(() => {
      log.info('stopped');
      log.flush?.();
      setTimeout(() => process.exit(0), 50).unref();
    }, (err) => {
      log.error({ err }, 'stop failed');
      process.exit(1);
    });
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
  // Machine-readable readiness line for supervisors and tests: where each listener is bound.
  if (process.env.ICHIDAN_READY_FD === '3') {
    const { createWriteStream } = await import('node:fs');
    createWriteStream('', { fd: 3 }).end(JSON.stringify({ ready: true, listeners: app.bound }) + '\n');
  }
}

function checkConfig(args: string[]): void {
  const file = args[0];
  if (!file) {
    process.stderr.write(USAGE + '\n');
    process.exit(2);
  }
  const config = loadOrExit(file);
  const tenants = Object.keys(config.tenants).length;
  process.stdout.write(`${file}: ok (${config.listeners.length} listeners, ${tenants} tenants, ${Object.keys(config.routes).length} routes)\n`);
}

function hashPassword(args: string[]): void {
  const password = args[0] ?? readFileSync(0, 'utf8').replace(/\r?\n$/, '');
  if (!password) {
    process.stderr.write('empty password\n');
    process.exit(2);
  }
  process.stdout.write(bcrypt.hashSync(password, 10) + '\n');
}

function showQueue(args: string[]): void {
  const config = loadOrExit(configPath(args));
  const db = new Database(join(config.dataDir, 'queue.db'), { readonly: true, fileMustExist: true });
  const { counts, corrupt } = queueStatus(db);
  for (const c of counts) process.stdout.write(`${c.tenant}\t${c.state}\t${c.n}\n`);
  for (const c of corrupt) process.stdout.write(`corrupt\t${c.id}\t${c.note}\n`);
  db.close();
}

const [command, ...rest] = process.argv.slice(2);
switch (command) {
  case 'start': await start(rest); break;
  case 'check-config': checkConfig(rest); break;
  case 'hash-password': hashPassword(rest); break;
  case 'queue': showQueue(rest); break;
  default:
    process.stderr.write(USAGE + '\n');
    process.exit(command ? 2 : 0);
}
