/*
 * What goes into a config file: checking one, and hashing a password for it.
 *
 *   ichidan check-config FILE        exit 0 if good (warnings on stderr), 1 with the problems if not
 *                                    (the certificate and key files it names are read and checked too)
 *   ichidan hash-password [PASS]     a bcrypt hash for `users[].password` (reads stdin without PASS)
 */
import { readFileSync } from 'node:fs';
import bcrypt from 'bcryptjs';
import { oversizeWarnings } from '../../engines/index.js';
import { checkCertificates } from '../ingress/ingress-certificates.js';
import { dkimWarnings } from '../../queue/accept/accept-dkim-config.js';
import { loadOrExit, usage } from './cli-common.js';

export const CONFIG_USAGE = `  ichidan check-config FILE
  ichidan hash-password [PASSWORD]`;

export function checkConfig(args: string[]): void {
  const file = args[0];
  if (!file) usage(CONFIG_USAGE);
  const config = loadOrExit(file);
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

export function hashPassword(args: string[]): void {
  const password = args[0] ?? readFileSync(0, 'utf8').replace(/\r?\n$/, '');
  if (!password) {
    process.stderr.write('empty password\n');
    process.exit(2);
  }
  process.stdout.write(bcrypt.hashSync(password, 10) + '\n');
}
