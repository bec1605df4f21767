#!/usr/bin/env node
/*
 * The `ichidan` executable.
 *
 *   ichidan start [-c FILE]   run the MTA (default config: config/default.yaml) until SIGTERM or
 *                             SIGINT (graceful stop); SIGHUP reloads the config file
 *   ichidan COMMAND ...       every other command is the CLI (cli/cli-commands.ts lists them)
 * With ICHIDAN_READY_FD=3, `start` writes one JSON line to fd 3 once every listener is bound
 * (`{"ready":true,"listeners":[...]}`), for supervisors and tests.
 * The daemon is loaded only for `start`, so the CLI's commands never load it.
 */
import { createWriteStream } from 'node:fs';
import { parseArgs } from 'node:util';
import { loadOrExit } from './cli/cli-common.js';
import { runCommand } from './cli/cli-commands.js';
import { createLogger } from './mta-log.js';

async function start(args: string[]): Promise<void> {
  const { values } = parseArgs({ args, options: { config: { type: 'string', short: 'c' } }, allowPositionals: false });
  const file = values.config ?? 'config/default.yaml';
  const config = loadOrExit(file);
  const log = createLogger(config.log.level);
  const { Ichidan } = await import('./mta-daemon.js');
  const app = await Ichidan.start(config, log, { configFile: file });
  process.on('SIGHUP', () => { app.reload(); });
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
  if (process.env.ICHIDAN_READY_FD === '3') {
    createWriteStream('', { fd: 3 }).end(JSON.stringify({ ready: true, listeners: app.bound }) + '\n');
  }
}

const [command, ...rest] = process.argv.slice(2);
if (command === 'start') await start(rest);
else await runCommand(command, rest);
