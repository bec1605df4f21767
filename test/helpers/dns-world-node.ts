/*
 * Ichidan with its DNS responder as a process of its own, for tests that run it inside a network
 * namespace (test/dns-steering-netns.test.ts), with the responder's two inputs in the test's hands:
 * the level and the resolvers' standings.
 *
 * Takes: argv `<config file> <log file>`; on stdin JSON lines `{ "level": "overload" }` and
 * `{ "known": "<resolver address>" }`, each acknowledged.
 * Gives: JSON lines on stdout: { event: 'ready', bound, dns } once listening; { event: 'paired',
 * resolver, client } for each pairing the responder reports; { event: 'ok' } per command. Ends
 * gracefully on SIGTERM.
 */
import { createWriteStream } from 'node:fs';
import { createInterface } from 'node:readline';
import { loadConfig } from '../../mta/mta-config.js';
import { Ichidan } from '../../mta/mta-daemon.js';
import { createLogger } from '../../mta/mta-log.js';
import type { Level, Standing } from '../../mta/admission/admission-decide.js';

function report(line: object): void {
  process.stdout.write(`${JSON.stringify(line)}\n`);
}

const [configFile, logFile] = process.argv.slice(2);
const config = loadConfig(configFile);
const standings = new Map<string, Standing>();
let level: Level = 'normal';

const app = await Ichidan.start(config, createLogger(config.log.level, createWriteStream(logFile, { flags: 'a' })), {
  configFile,
  dns: {
    level: () => level,
    senders: {
      resolverStanding: (resolver) => standings.get(resolver) ?? 'unknown',
      pairResolver: (resolver, client) => report({ event: 'paired', resolver, client }),
    },
  },
});
report({ event: 'ready', bound: app.bound, dns: app.dns?.address ?? null });

createInterface({ input: process.stdin }).on('line', (line) => {
  const command = JSON.parse(line) as { level?: Level; known?: string };
  if (command.level) level = command.level;
  if (command.known) standings.set(command.known, 'known');
  report({ event: 'ok' });
});

const stop = () => { void app.stop().then(() => process.exit(0)); };
process.once('SIGTERM', stop);
process.once('SIGINT', stop);
