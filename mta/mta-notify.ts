/*
 * Readiness for systemd (a unit with Type=notify, sd_notify(3)): READY=1 once every listener is
 * bound and the queue reconciled (with workers: once every worker listens), RELOADING=1 then
 * READY=1 around a reload (SIGHUP), STOPPING=1 when a stop begins.
 *
 * Takes: $NOTIFY_SOCKET, set by systemd (absent: nothing is sent, as outside systemd).
 * Sends: one datagram per state, from this process through native/sd-notify when it is built,
 *   else through the `systemd-notify --pid=<this process>` program (the unit's NotifyAccess=all
 *   lets systemd take it from a child).
 * A failure is logged and never stops the process: a unit whose start times out says enough.
 */
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import type { Logger } from './mta-log.js';
import { packageRoot } from './mta-package.js';

export interface Notifier {
  ready(): void;
  reloading(): void;
  stopping(): void;
}

export type Send = (socket: string, message: string) => void;

/** The addon's `notify`, or null when it is not built or does not load. */
export function addonSender(): Send | null {
  const root = packageRoot();
  const file = root && join(root, 'native', 'sd-notify', 'build', 'Release', 'sd_notify.node');
  if (!file || !existsSync(file)) return null;
  try {
    const addon = createRequire(import.meta.url)(file) as { notify?: Send };
    return typeof addon.notify === 'function' ? addon.notify : null;
  } catch {
    return null;
  }
}

/** `sender` stands for the addon in tests: null makes it missing. */
export function createNotifier(log: Logger, env: NodeJS.ProcessEnv = process.env, sender?: Send | null): Notifier {
  const socket = env.NOTIFY_SOCKET;
  const addon = socket ? (sender === undefined ? addonSender() : sender) : null;
  if (socket && !addon) log.warn({ notifySocket: socket }, 'the sd_notify addon is not built (node scripts/build-addon.mjs): readiness goes through systemd-notify');
  const send = (message: string) => {
    if (!socket) return;
    if (addon) {
      try {
        addon(socket, message);
      } catch (err) {
        log.error({ err, notifySocket: socket, message }, 'cannot notify systemd');
      }
      return;
    }
    const child = spawn('systemd-notify', [`--pid=${process.pid}`, ...message.split('\n')], { stdio: 'ignore', env: { ...process.env, NOTIFY_SOCKET: socket } });
    child.on('error', (err) => log.error({ err, notifySocket: socket, message }, 'cannot notify systemd'));
    child.on('exit', (code) => { if (code !== 0) log.error({ code, message }, 'systemd-notify failed'); });
  };
  return {
    ready: () => send(`READY=1\nMAINPID=${process.pid}`),
    // systemd 253 and later want the monotonic clock's reading with RELOADING=1; process.hrtime is that clock.
    reloading: () => send(`RELOADING=1\nMONOTONIC_USEC=${process.hrtime.bigint() / 1000n}`),
    stopping: () => send('STOPPING=1'),
  };
}
