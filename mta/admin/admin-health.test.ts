import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { healthRoute, readiness, type HealthTarget } from './admin-health.js';

describe('readiness', () => {
  let dir: string;
  let target: HealthTarget & { draining: boolean; down: string[]; held: number; low: boolean; dbFile: string };

  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'ichidan-health-'));
    const dbFile = join(dir, 'queue.db');
    await writeFile(dbFile, '');
    const t = {
      draining: false, down: [] as string[], held: 0, low: false, dbFile,
      listening: () => ['mx', 'submission'].map((name) => ({ name, listening: !t.down.includes(name) })),
      queue: {
        spool: { dir },
        store: { db: { get name() { return t.dbFile; } } },
        pendingOutcomes: { get size() { return t.held; } },
        lowOnSpace: () => t.low,
      } as unknown as HealthTarget['queue'],
    };
    target = t;
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('is ready when every check passes, and leaves nothing in the spool', async () => {
    expect(await readiness(target)).toEqual({ ready: true, checks: { listeners: { ok: true }, database: { ok: true }, spool: { ok: true }, disk: { ok: true }, draining: { ok: true } } });
    expect(await healthRoute({ method: 'GET', path: '/readyz', query: new URLSearchParams(), body: {} }, target)).toMatchObject([200, { ready: true }]);
  });

  it('names each check that fails', async () => {
    target.down = ['submission'];
    target.held = 3;
    target.low = true;
    const r = await readiness(target);
    expect(r.ready).toBe(false);
    expect(r.checks).toMatchObject({
      listeners: { ok: false, detail: 'not listening: submission' },
      database: { ok: false, detail: '3 delivery outcomes wait for the database' },
      disk: { ok: false },
      spool: { ok: true },
    });
    expect(await healthRoute({ method: 'GET', path: '/readyz', query: new URLSearchParams(), body: {} }, target)).toMatchObject([503, { ready: false }]);
  });

  it('is not ready when the queue database file is gone', async () => {
    target.dbFile = join(dir, 'missing.db');
    expect((await readiness(target)).checks.database).toMatchObject({ ok: false, detail: expect.stringMatching(/ENOENT/) });
  });

  it('answers only GET /healthz and /readyz', async () => {
    const req = (method: string, path: string) => healthRoute({ method, path, query: new URLSearchParams(), body: {} }, target);
    expect(await req('GET', '/healthz')).toEqual([200, { alive: true }]);
    expect(await req('POST', '/healthz')).toBeNull();
    expect(await req('GET', '/metrics')).toBeNull();
  });
});
