/*
 * The pure parts of the workers' primary (mta-workers.ts): each worker's own config and the
 * restart backoff. The processes themselves are tested in test/cluster-workers.test.ts.
 */
import { describe, expect, it } from 'vitest';
import { parseConfig } from './mta-config.js';
import { restartDelay, workerConfig, workerCount } from './mta-workers.js';

const base = parseConfig({
  dataDir: '/srv/ichidan',
  cluster: { redis: 'redis://127.0.0.1:6379', node: 'mx1', workers: 4 },
  admin: { socket: '/run/ichidan.sock', port: 0, token: 'a-token-of-sixteen-chars' },
});

describe('workerConfig', () => {
  it('gives each worker its own data folder, node name and admin socket, and no TCP admin port', () => {
    const w2 = workerConfig(base, 2);
    expect(w2.dataDir).toBe('/srv/ichidan/worker-2');
    expect(w2.cluster.node).toBe('mx1-w2');
    expect(w2.admin.socket).toBeUndefined();
    expect(w2.admin.port).toBeUndefined();
    expect(w2.admin.token).toBe(base.admin.token);
    expect(w2.cluster.redis).toBe(base.cluster.redis);
    expect(Object.isFrozen(w2) && Object.isFrozen(w2.cluster)).toBe(true);
  });

  it('names workers after the default node name when cluster.node is not set', () => {
    const config = parseConfig({ dataDir: '/srv/a', cluster: { redis: 'redis://127.0.0.1:6379', workers: 2 } });
    const [w1, w2] = [workerConfig(config, 1), workerConfig(config, 2)];
    expect(w1.cluster.node).toMatch(/-w1$/);
    expect(w2.cluster.node).toBe(w1.cluster.node!.replace(/-w1$/, '-w2'));
  });
});

describe('workerCount', () => {
  it('reads a number, and "auto" as one per core', () => {
    expect(workerCount(base)).toBe(4);
    const auto = parseConfig({ cluster: { redis: 'redis://127.0.0.1:6379', workers: 'auto' } });
    expect(workerCount(auto)).toBeGreaterThanOrEqual(1);
  });
});

describe('restartDelay', () => {
  it.each([
    // streak, lived ms → streak, delay ms
    [0, 60_000, 0, 0],
    [5, 30_000, 0, 0],
    [0, 100, 1, 250],
    [1, 100, 2, 500],
    [2, 29_999, 3, 1000],
    [7, 100, 8, 30_000],
    [50, 100, 51, 30_000],
  ])('streak %i, lived %i ms: streak %i, waits %i ms', (streak, lived, next, delay) => {
    expect(restartDelay(streak, lived)).toEqual({ streak: next, delayMs: delay });
  });
});
