#!/usr/bin/env node
/*
 * The `ichidan` executable: the command line (cli/cli-commands.ts) with `start` run here.
 *
 *   ichidan start [-c FILE] [--workers N|auto]
 *                             run the MTA (the config: cli/cli-common.ts `loadCliConfig`) until SIGTERM or
 *                             SIGINT (graceful stop); SIGHUP reloads the config file. With more
 *                             than one worker (--workers, else cluster.workers) this process is
 *                             the primary of that many nodes sharing the ports (mta-workers.ts).
 *                             SIGUSR2 reopens log.file (logrotate); under systemd, readiness,
 *                             reloading and stopping are notified (mta-notify.ts).
 *   ichidan COMMAND ...       every other command is the CLI (cli/cli-commands.ts lists them)
 * With ICHIDAN_READY_FD=3, `start` writes one JSON line to fd 3 once every listener is bound
 * (`{"ready":true,"listeners":[...]}`; a primary adds `"workers":[{index,pid}]` once every worker
 * listens), for supervisors and tests.
 * The daemon is loaded only for `start`, so the CLI's commands never load it.
 */
import { loadCliConfig } from './cli/cli-common.js';
import { runCli, type StartOptions } from './cli/cli-commands.js';
import type { Config } from './mta-config.js';

/** `--workers N|auto` stands for cluster.workers, and is validated as that key. */
function workersFlag(value: string | undefined) {
  if (value === undefined) return undefined;
  const workers = /^\d+$/.test(value) ? Number(value) : value;
  return (input: Record<string, unknown>) => ({ ...input, cluster: { ...(input.cluster as object | undefined), workers } });
}

async function start(options: StartOptions): Promise<void> {
  // Loaded here, not above: the other commands start without them.
  const { loadConfig } = await import('./mta-config.js');
  const { createProcessLogger } = await import('./mta-log.js');
  const { createNotifier } = await import('./mta-notify.js');
  const { announceReady, workerConfig, workerCount, workerIndex } = await import('./mta-workers.js');
  const override = workersFlag(options.workers);
  const index = workerIndex();
  // A worker derives its own config from the file at start and at every reload.
  const load = (f: string): Config => {
    const config = loadConfig(f, override);
    return index === null ? config : workerConfig(config, index);
  };
  const { file, config } = await loadCliConfig(options.config, load);
  const { log: root, reopen } = openLog(createProcessLogger, file, config);
  // logrotate's postrotate signal: the log file is opened again under its name (a worker's primary passes it on).
  process.on('SIGUSR2', () => { reopen(); });
  const notifier = index === null ? createNotifier(root) : null;
  if (index === null && workerCount(config) > 1) {
    const { runPrimary } = await import('./mta-workers.js');
    await runPrimary(config, workerCount(config), root, notifier!).catch((err: Error & { code?: string }) => {
      if (err.code !== 'EDATADIRINUSE') throw err;
      process.stderr.write(`ichidan: ${err.message}\n`);
      process.exit(1);
    });
    root.flush?.();
    setTimeout(() => process.exit(), 50).unref();
    return;
  }
  const log = index === null ? root : root.child({ worker: index });
  const { Ichidan } = await import('./mta-daemon.js');
  const app = await Ichidan.start(config, log, { configFile: file, load }).catch((err: Error & { problems?: string[]; code?: string }) => {
    // The data folder is another running Ichidan's (queue/queue-run-marker.ts).
    if (err.code === 'EDATADIRINUSE') {
      process.stderr.write(`ichidan: ${err.message}\n`);
      process.exit(1);
    }
    // A certificate file the config names that cannot be offered (ingress/ingress-certificates.ts).
    if (!err.problems) throw err;
    process.stderr.write(`${file}: invalid configuration\n${err.problems.map((p) => `  - ${p}`).join('\n')}\n`);
    process.exit(1);
  });
  process.on('SIGHUP', () => {
    notifier?.reloading();
    app.reload();
    notifier?.ready();
  });
  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) return;
    stopping = true;
    notifier?.stopping();
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
  announceReady(app.bound);
  notifier?.ready();
}

type ProcessLogger = typeof import('./mta-log.js').createProcessLogger;

/** The process's log (mta-log.ts); a log.file that cannot be opened is a config error. */
function openLog(create: ProcessLogger, file: string, config: Config): ReturnType<ProcessLogger> {
  try {
    return create(config.log);
  } catch (err) {
    process.stderr.write(`${file}: invalid configuration\n  - log.file: cannot open ${config.log.file}: ${(err as Error).message}\n`);
    process.exit(1);
  }
}

await runCli(process.argv.slice(2), start);
