/*
 * mta/ — the process: SMTP ingress, the transparent proxy, the admin API, the CLI, the root config
 * and the composition of every stage below it.
 *
 * Gives (the package's public surface, as tests and embedders use it): `Ichidan`, one running MTA
 *   (mta-daemon.ts: start, reconfigure, reload, stop); the config loaders (mta-config.ts) and the
 *   `Config` type (mta-config-schema.ts); `adminSocket`, where the admin API listens.
 * The `ichidan` executable is mta-main.ts: `start` runs the daemon, every other command is the CLI
 * (cli/), which never loads this module.
 */
export { Ichidan, type BoundListener } from './mta-daemon.js';
export type { ReloadResult } from './mta-reload.js';
export { adminSocket, loadConfig, parseConfig, ConfigError } from './mta-config.js';
export type { Config } from './mta-config-schema.js';
