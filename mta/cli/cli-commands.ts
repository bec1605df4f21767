/*
 * The `ichidan` command line, assembled: the commander tree of every command, the global options,
 * and how it ends (exit status, one-line errors, never a stack trace).
 *
 *   start                               mta-main.ts (handed in: the CLI never loads the daemon)
 *   check-config, hash-password         cli-config.ts
 *   queue (status, hold, release, purge)   cli-queue.ts; queue corrupt: cli-corrupt.ts;
 *     queue list, show, why, flush, bounce, delete: cli-queue-inspect.ts (wired in cli-queue.ts)
 *   tenants (suspend, resume)           cli-tenants.ts
 *   suppression (list, add, remove, import)   cli-suppression.ts
 *   egress (status, events, undo)       cli-egress.ts
 *   quarantine (list, release)          cli-quarantine.ts
 *   scans show                          cli-scans.ts
 *   engines (list, disable, enable, events, stats)   cli-engines.ts
 *   reload                              cli-reload.ts
 *   sessions (list, show)               cli-sessions.ts (list --message: cli-queue-inspect.ts)
 *   workers                             cli-workers.ts
 *   cluster status, node (drain, undrain)   cli-cluster.ts
 *   admission status                    cli-admission.ts
 *   dkim record                         cli-dkim.ts
 *   senders (list, show, pin, block, forget)   cli-senders.ts
 *   completion bash|zsh                 cli-completion.ts (built from this tree)
 * Each file adds its group with `addXCommands(program)`, which returns the group's Command: a new
 * subcommand is one `.command()` on it. Global options: `-c, --config FILE` and `--worker I`
 * (cli-common.ts `commandConfig`). `--help` on every command and `help [command]`, `--version`
 * (package.json's). Exit status: 0 done, 1 failed or refused, 2 a usage error; a failure of the
 * command line or its surroundings is one line "ichidan: ..." on stderr (ICHIDAN_DEBUG=1 adds the
 * stack of an unexpected error).
 */
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Command, CommanderError, Help } from 'commander';
import { addAdmissionCommands } from './cli-admission.js';
import { addClusterCommands, addNodeCommands } from './cli-cluster.js';
import { addConfigCommands } from './cli-config.js';
import { addCompletionCommand } from './cli-completion.js';
import { addDkimCommands } from './cli-dkim.js';
import { addEgressCommands } from './cli-egress.js';
import { addEnginesCommands } from './cli-engines.js';
import { addQuarantineCommands } from './cli-quarantine.js';
import { addQueueCommands } from './cli-queue.js';
import { addReloadCommand } from './cli-reload.js';
import { addScansCommands } from './cli-scans.js';
import { addSendersCommands } from './cli-senders.js';
import { addSessionsCommands } from './cli-sessions.js';
import { addSuppressionCommands } from './cli-suppression.js';
import { addTenantsCommands } from './cli-tenants.js';
import { addWorkersCommand } from './cli-workers.js';
import { usage, type GlobalOptions } from './cli-common.js';

/** What `ichidan start` is given; mta-main.ts runs it. */
export interface StartOptions {
  config?: string;
  workers?: string;
}

/** The package's version, from the package.json above this file (from dist/ too). */
export function packageVersion(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  while (!existsSync(join(dir, 'package.json'))) {
    const parent = dirname(dir);
    if (parent === dir) return 'unknown';
    dir = parent;
  }
  return String((JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8')) as { version?: unknown }).version ?? 'unknown');
}

const AFTER_HELP = `
Every command but start, check-config and hash-password reads the config (-c FILE, default
config/default.yaml) to find the queue database (dataDir) or the running process's admin socket
(admin.socket); ICHIDAN_ADMIN_TOKEN, when set, is sent to the admin API as the bearer token.

Exit status: 0 done; 1 failed or refused (the reason on stderr); 2 a usage error.`;

/** The full name of a command, as typed: "ichidan queue corrupt". */
export function commandPath(cmd: Command): string {
  const names: string[] = [];
  for (let c: Command | null = cmd; c; c = c.parent) names.unshift(c.name());
  return names.join(' ');
}

/** "ichidan senders list|show|pin|block|forget": the choices at a group. */
function choices(group: Command): string {
  return `${commandPath(group)} ${group.commands.map((c) => c.name()).join('|')}`;
}

/** commander's message ("error: ...", perhaps a suggestion on a second line) as one line. */
function errorLine(message: string, cmd: Command): string {
  const text = message.replace(/^error: /, '').replace(/\s*\n\s*/g, ' ').trim();
  const parent = cmd.parent;
  // Extra words after a group's default command (ichidan queue bogus) name a command that does not exist.
  if (/^too many arguments/.test(text) && parent && defaultCommand(parent) === cmd.name()) {
    return `ichidan: unknown command '${cmd.args[0]}' for '${commandPath(parent)}' (${choices(parent)}; see --help)\n`;
  }
  return `ichidan: ${text} (see '${commandPath(cmd)} --help')\n`;
}

/** The command a group runs when given none (`{ isDefault: true }`); commander keeps it private. */
function defaultCommand(cmd: Command): string | null {
  return (cmd as unknown as { _defaultCommandName?: string | null })._defaultCommandName ?? null;
}

/**
 * Every command: errors as one line and thrown (runCli ends with the right status). A group with no
 * default command says which commands it has when given none or an unknown one; the bare program
 * prints its help.
 */
function finish(cmd: Command): void {
  cmd.exitOverride();
  cmd.configureOutput({ outputError: (message, write) => write(errorLine(message, cmd)) });
  // A group is listed as "name <command>", not with the argument that catches unknown commands.
  cmd.configureHelp({ subcommandTerm: (sub) => (sub.commands.length > 0 ? `${sub.name()} <command>` : Help.prototype.subcommandTerm.call(new Help(), sub)) });
  // `help [command]` on every group, also those whose action below would otherwise hide it.
  if (cmd.commands.length > 0) cmd.helpCommand('help [command]', 'help for a command');
  if (cmd.commands.length > 0 && defaultCommand(cmd) === null) {
    cmd.usage('[options] <command>').argument('[command]').allowExcessArguments().action((name: string | undefined) => {
      if (name === undefined && cmd.parent === null) {
        cmd.outputHelp();
        process.exit(0);
      }
      if (name === undefined) usage(`a command is needed: ${choices(cmd)} (see '${commandPath(cmd)} --help')`);
      usage(`unknown command '${name}' for '${commandPath(cmd)}' (${choices(cmd)}; see --help)`);
    });
  }
  for (const sub of cmd.commands) finish(sub);
}

/** The whole tree; `start` runs the daemon (mta-main.ts hands it in). */
export function buildProgram(start: (options: StartOptions) => Promise<void>): Command {
  const program = new Command('ichidan')
    .description('Ichidan, a single-stage mail transfer agent: the process and the commands that operate it')
    .version(packageVersion(), '-V, --version', 'print the version')
    .option('-c, --config <file>', 'the config file (default: config/default.yaml)')
    .option('--worker <i>', 'about worker I of a primary started with --workers N (its data folder and admin socket)')
    .addHelpText('after', AFTER_HELP)
    .showSuggestionAfterError();
  program.command('start').description('run the MTA until SIGTERM or SIGINT (graceful stop); SIGHUP reloads the config file')
    .option('--workers <n>', 'run N worker processes sharing the ports, or "auto" (one per CPU); default: cluster.workers')
    .addHelpText('after', '\nWith ICHIDAN_READY_FD=3, writes one JSON line to fd 3 once every listener is bound.')
    .action((opts: { workers?: string }, cmd: Command) => {
      const globals = cmd.optsWithGlobals<GlobalOptions>();
      if (globals.worker !== undefined) usage('--worker is for commands about a running worker; start takes --workers N');
      return start({ config: globals.config, workers: opts.workers });
    });
  addConfigCommands(program);
  addQueueCommands(program);
  addTenantsCommands(program);
  addSuppressionCommands(program);
  addEgressCommands(program);
  addQuarantineCommands(program);
  addScansCommands(program);
  addEnginesCommands(program);
  addReloadCommand(program);
  addSessionsCommands(program);
  addWorkersCommand(program);
  addClusterCommands(program);
  addNodeCommands(program);
  addAdmissionCommands(program);
  addDkimCommands(program);
  addSendersCommands(program);
  addCompletionCommand(program);
  finish(program);
  return program;
}

/** Runs one command line (without "node ichidan") and ends the process when it fails. */
export async function runCli(argv: string[], start: (options: StartOptions) => Promise<void>): Promise<void> {
  const program = buildProgram(start);
  program.hook('preAction', (_program, action) => {
    if (action.name() === 'start') return;
    // `ichidan ... | head`: a reader that stops early is not an error (the daemon's output is its own affair).
    process.stdout.on('error', (err: NodeJS.ErrnoException) => {
      if (err.code === 'EPIPE') process.exit(0);
    });
  });
  try {
    await program.parseAsync(argv, { from: 'user' });
  } catch (err) {
    if (err instanceof CommanderError) process.exit(err.exitCode === 0 ? 0 : 2);
    const message = err instanceof Error ? err.message : String(err);
    process.stderr.write(`ichidan: ${message.replace(/\s*\n\s*/g, ' ')}\n`);
    if (process.env.ICHIDAN_DEBUG) process.stderr.write(`${(err as Error).stack ?? ''}\n`);
    process.exit(1);
  }
}
