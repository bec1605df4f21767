/*
 * `ichidan reload [-c FILE]`: the running process re-reads its config file (as on SIGHUP) and says
 * which changed settings need a restart (admin/admin-reload.ts, mta-reload.ts).
 */
import { admin, options } from './cli-common.js';

export const RELOAD_USAGE = `  ichidan reload [-c FILE]`;

export async function reload(args: string[]): Promise<void> {
  const { config } = options(args);
  const body = await admin(config, 'POST', '/v1/reload');
  const restart = body.needsRestart as string[];
  process.stdout.write(`reloaded: generation ${String(body.generation)}${restart.length ? `; needs a restart to apply: ${restart.join(', ')}` : ''}\n`);
}
