/*
 * The admin API's health routes, for supervisors, load balancers and orchestrators.
 *
 *   GET /healthz   200 {"alive":true}: the process answers (its event loop turns)
 *   GET /readyz    200 when this node should be given mail, else 503; the body names each check:
 *                    listeners   every configured listener is bound and listening
 *                    database    the queue database file is writable and no delivery outcome
 *                                waits in memory for it (queue-pending.ts)
 *                    spool       a folder can be made and removed in the spool folder now
 *                    disk        free space is above queue.minFree (new mail is taken)
 *                    draining    the node is not drained (`ichidan node drain`)
 *                  e.g. {"ready":false,"checks":{"spool":{"ok":false,"detail":"EACCES ..."},…}}
 * Neither needs the token nor a particular Host header (admin-server.ts lets them through before
 * those checks): they change nothing and reveal nothing but whether this node takes mail.
 * Cost: /readyz makes and removes one empty folder in the spool (a folder, so the spool's listing
 * of message files never sees it) and checks one file's access; no database query.
 */
import { access, mkdir, rmdir } from 'node:fs/promises';
import { constants } from 'node:fs';
import { join } from 'node:path';
import type { Queue } from '../../queue/index.js';
import type { AdminRoute } from './admin-request.js';

export interface HealthTarget {
  readonly draining: boolean;
  /** Each configured listener, and whether it is listening now. */
  listening(): Array<{ name: string; listening: boolean }>;
  readonly queue: Pick<Queue, 'spool' | 'store' | 'pendingOutcomes' | 'lowOnSpace'>;
}

export interface Check {
  ok: boolean;
  detail?: string;
}

export interface Readiness {
  ready: boolean;
  checks: Record<'listeners' | 'database' | 'spool' | 'disk' | 'draining', Check>;
}

/** The paths anyone who reaches the admin listener may ask, without the token. */
export const OPEN_PATHS: ReadonlySet<string> = new Set(['/healthz', '/readyz']);

export const healthRoute: AdminRoute<HealthTarget> = async ({ method, path }, target) => {
  if (method !== 'GET') return null;
  if (path === '/healthz') return [200, { alive: true }];
  if (path !== '/readyz') return null;
  const r = await readiness(target);
  return [r.ready ? 200 : 503, r];
};

export async function readiness(target: HealthTarget): Promise<Readiness> {
  const down = target.listening().filter((l) => !l.listening).map((l) => l.name);
  const { queue } = target;
  const checks: Readiness['checks'] = {
    listeners: down.length === 0 ? { ok: true } : { ok: false, detail: `not listening: ${down.join(', ')}` },
    database: await databaseCheck(queue),
    spool: await spoolCheck(queue.spool.dir),
    disk: queue.lowOnSpace() ? { ok: false, detail: 'free space below queue.minFree: new mail is refused' } : { ok: true },
    draining: target.draining ? { ok: false, detail: 'this node is drained' } : { ok: true },
  };
  return { ready: Object.values(checks).every((c) => c.ok), checks };
}

async function databaseCheck(queue: HealthTarget['queue']): Promise<Check> {
  try {
    await access(queue.store.db.name, constants.W_OK);
  } catch (err) {
    return { ok: false, detail: `not writable (${errorCode(err)})` };
  }
  const held = queue.pendingOutcomes.size;
  return held === 0 ? { ok: true } : { ok: false, detail: `${held} delivery outcomes wait for the database` };
}

async function spoolCheck(dir: string): Promise<Check> {
  const probe = join(dir, `.ready-${process.pid}`);
  try {
    await mkdir(probe);
    await rmdir(probe);
    return { ok: true };
  } catch (err) {
    // A probe left by an earlier look that failed half-way is no failure of the spool.
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') return rmdir(probe).then(() => ({ ok: true }), (e: unknown) => ({ ok: false, detail: `not writable (${errorCode(e)})` }));
    return { ok: false, detail: `not writable (${errorCode(err)})` };
  }
}

/** The error's code only: the route is open to anyone (and to pages rebound to this address), so it names no path. */
function errorCode(err: unknown): string {
  return (err as NodeJS.ErrnoException).code ?? 'error';
}
