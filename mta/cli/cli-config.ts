/*
 * What goes into a config file: checking one, and hashing a password for it.
 *
 *   ichidan check-config [FILE]      exit 0 if good (warnings on stderr), 1 with the problems if not
 *                                    (the certificate and key files it names are read and checked too);
 *                                    without FILE, the config the command line names (-c)
 *   ichidan hash-password [PASS]     a bcrypt hash for `users[].password` (reads stdin without PASS)
 */
import { readFileSync } from 'node:fs';
import bcrypt from 'bcryptjs';
import type { Command } from 'commander';
import { fail, loadCliConfig, type GlobalOptions } from './cli-common.js';

async function checkConfig(given: string | undefined, cmd: Command): Promise<void> {
  const { file, config } = await loadCliConfig(given ?? cmd.optsWithGlobals<GlobalOptions>().config);
  const { oversizeWarnings } = await import('../../engines/index.js');
  const { checkCertificates } = await import('../ingress/ingress-certificates.js');
  const { dkimWarnings } = await import('../../queue/accept/accept-dkim-config.js');
  // The files the config names must hold what it says: a certificate, its key (as a reload would find them).
  const { problems, warnings } = checkCertificates(config);
  if (problems.length > 0) {
    process.stderr.write(`${file}: invalid configuration\n${problems.map((p) => `  - ${p}`).join('\n')}\n`);
    process.exit(1);
  }
  for (const warning of [...oversizeWarnings(config.engines, config.limits.maxMessageSize), ...warnings]) process.stderr.write(`${file}: warning: ${warning}\n`);
  for (const warning of dkimWarnings(config.tenants)) process.stderr.write(`${file}: warning: ${warning}\n`);
  const tenants = Object.keys(config.tenants).length;
  process.stdout.write(`${file}: ok (${config.listeners.length} listeners, ${tenants} tenants, ${Object.keys(config.routes).length} routes)\n`);
}

function hashPassword(given: string | undefined): void {
  let password = given;
  if (password === undefined) {
    try {
      password = readFileSync(0, 'utf8').replace(/\r?\n$/, '');
    } catch (err) {
      fail(`cannot read the password from stdin: ${(err as Error).message}`);
    }
  }
  if (!password) fail('empty password', 2);
  process.stdout.write(bcrypt.hashSync(password, 10) + '\n');
}

export function addConfigCommands(program: Command): void {
  program.command('check-config').description('check a config file and the certificate and key files it names; exit 0 if good, 1 naming each key if not')
    .argument('[file]', 'the config file (default: the one -c names)')
    .action((file: string | undefined, _opts: unknown, cmd: Command) => checkConfig(file, cmd));
  program.command('hash-password').description('a bcrypt hash for users[].password (reads stdin without PASSWORD)')
    .argument('[password]', 'the password')
    .action((password: string | undefined) => hashPassword(password));
}
