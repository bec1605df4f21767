// How the last run ended, from the marker it left in the data folder; a folder another running
// Ichidan holds is refused; after a stop of the machine the queue database is checked first.
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, open, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import pino from 'pino';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { beginRun, bootId, processStart, RunMarker } from './queue-run-marker.js';
import { checkAfterCrash } from './queue-store-check.js';

let dir: string;
beforeEach(async () => { dir = await mkdtemp(join(tmpdir(), 'ichidan-marker-')); });
afterEach(async () => { await rm(dir, { recursive: true, force: true }); });

const mark = (m: object) => writeFile(join(dir, 'running'), JSON.stringify(m));

describe('the run marker', () => {
  it('tells a clean stop, a stop of the process and one of the machine apart', async () => {
    const marker = new RunMarker(dir);
    expect((await marker.begin()).lastStop).toBe('clean');
    expect(JSON.parse(await readFile(marker.path, 'utf8'))).toMatchObject({ bootId: bootId(), pid: process.pid });
    await marker.end();
    expect(existsSync(marker.path)).toBe(false);
    expect((await new RunMarker(dir).begin()).lastStop).toBe('clean');

    // This boot, a process that is gone (a pid far above any in use, or one whose start time differs).
    await mark({ bootId: bootId(), pid: 4_000_000, started: '1', startedAt: 1 });
    expect(await new RunMarker(dir).begin()).toEqual({ lastStop: 'process', since: 1 });
    await mark({ bootId: bootId(), pid: process.ppid, started: 'not-its-start', startedAt: 2 });
    expect((await new RunMarker(dir).begin()).lastStop).toBe('process');
    // Another boot, and a marker torn as the machine stopped.
    await mark({ bootId: 'another-boot', pid: process.pid, started: processStart(process.pid), startedAt: 3 });
    expect((await new RunMarker(dir).begin()).lastStop).toBe('machine');
    await writeFile(join(dir, 'running'), '{"bootId":"ab');
    // A start stopped while it checks (its hook fails here) leaves the last run's marker as it was.
    await expect(new RunMarker(dir).begin(async (lastStop) => { throw new Error(`stopped while handling ${lastStop}`); })).rejects.toThrow('stopped while handling machine');
    expect((await new RunMarker(dir).begin()).lastStop).toBe('machine');
    // Its own earlier marker (a queue opened again in the same process): not another Ichidan.
    expect((await new RunMarker(dir).begin()).lastStop).toBe('process');
  });

  it('refuses a data folder that another running process of this boot has marked', async () => {
    const child = spawn('sleep', ['30'], { stdio: 'ignore' });
    try {
      await new Promise((r) => child.once('spawn', r));
      await mark({ bootId: bootId(), pid: child.pid, started: processStart(child.pid!), startedAt: 4 });
      await expect(new RunMarker(dir).begin()).rejects.toMatchObject({ code: 'EDATADIRINUSE', message: expect.stringContaining(`pid ${child.pid}`) });
      // The marker is left as it was: it is the other process's.
      expect(JSON.parse(await readFile(join(dir, 'running'), 'utf8')).pid).toBe(child.pid);
    } finally {
      child.kill('SIGKILL');
    }
  });
});

/** A queue database of many pages, closed whole; with `damage`, the headers of a few of its pages overwritten. */
async function database(damage: boolean): Promise<string> {
  const file = join(dir, 'queue.db');
  const db = new Database(file);
  db.pragma('page_size = 1024');
  db.pragma('journal_mode = WAL');
  db.exec('CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT); CREATE INDEX t_v ON t (v)');
  const put = db.prepare('INSERT INTO t (v) VALUES (?)');
  for (let i = 0; i < 400; i++) put.run(`value ${i} ${'x'.repeat(40)}`);
  db.pragma('wal_checkpoint(TRUNCATE)');
  db.close();
  if (damage) {
    const fh = await open(file, 'r+');
    for (const page of [3, 6, 9]) await fh.write(Buffer.alloc(64, 0x5a), 0, 64, (page - 1) * 1024);
    await fh.close();
  }
  return file;
}

describe('the queue database after a stop of the machine', () => {
  it('is kept when sound', async () => {
    const file = await database(false);
    expect(await checkAfterCrash(file)).toEqual({ sound: true, problems: [] });
    expect(existsSync(file)).toBe(true);
  });

  it('is set aside when damaged, and the problems are told', async () => {
    const file = await database(true);
    const check = await checkAfterCrash(file, new Date('2026-12-07T10:00:00.000Z'));
    expect(check.sound).toBe(false);
    expect(check.problems.length).toBeGreaterThan(0);
    expect(check.setAside).toBe(`${file}.damaged-2026-12-07T10-00-00-000Z`);
    // Nothing named queue.db is left for the next open: it starts a new database.
    expect((await readdir(dir)).filter((f) => f.startsWith('queue.db'))).toEqual(['queue.db.damaged-2026-12-07T10-00-00-000Z']);
  });

  it('is checked at start only when the marker says the machine stopped, and the check is logged', async () => {
    const logs: Array<{ msg: string }> = [];
    const log = pino({ level: 'info' }, { write: (line: string) => logs.push(JSON.parse(line)) });
    const file = await database(true);
    await mark({ bootId: bootId(), pid: 4_000_000, started: '1', startedAt: 1 });
    await beginRun(dir, log);
    expect(existsSync(file)).toBe(true);
    expect(logs.map((l) => l.msg)).toEqual(['the last run stopped without closing the queue: its journal is replayed']);

    await mark({ bootId: 'another-boot', pid: 1, started: '1', startedAt: 1 });
    logs.length = 0;
    await beginRun(dir, log);
    expect(existsSync(file)).toBe(false);
    expect(logs.map((l) => l.msg)).toEqual([
      'the machine stopped while the queue was open: checking the queue database',
      expect.stringMatching(/^queue database damaged: set aside, and a new one started/),
    ]);
  });
});
