import { mkdtempSync, readFileSync, renameSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';
import { afterEach, describe, expect, it } from 'vitest';
import { createProcessLogger, reopenAfterFlush, type Reopenable } from './mta-log.js';

const dirs: string[] = [];
afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

function tempFile(): string {
  const dir = mkdtempSync(join(tmpdir(), 'ichidan-log-'));
  dirs.push(dir);
  return join(dir, 'ichidan.log');
}

const lines = (file: string) => readFileSync(file, 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l).msg as string);

describe('process log', () => {
  it('writes a lone line within a fraction of a second, lines gathered meanwhile in order', async () => {
    const file = tempFile();
    const { log } = createProcessLogger({ level: 'info', file });
    log.info('one');
    log.info('two');
    await new Promise((r) => setTimeout(r, 400));
    expect(lines(file)).toEqual(['one', 'two']);
  });

  it('writes what is waiting when the process exits (once the file is open)', () => {
    const file = tempFile();
    const built = join(import.meta.dirname, '..', 'dist', 'mta', 'mta-log.js');
    const script = `import(${JSON.stringify(built)})`
      + `.then(({ createProcessLogger }) => { const { log } = createProcessLogger({ level: 'info', file: ${JSON.stringify(file)} }); setTimeout(() => { log.info('last words'); process.exit(3); }, 100); })`;
    const run = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8' });
    expect(run.status).toBe(3);
    expect(lines(file)).toEqual(['last words']);
  });

  it('on a reopen writes the lines still waiting to the renamed file, and the later ones to the new one', async () => {
    const file = tempFile();
    const { log, reopen } = createProcessLogger({ level: 'info', file });
    log.info('opened');
    await new Promise((r) => setTimeout(r, 300));
    log.info('before the rotation');
    // logrotate renames the file and signals at once, while that line still waits in its batch.
    renameSync(file, `${file}.1`);
    reopen();
    await new Promise((r) => setTimeout(r, 50));
    log.info('after the rotation');
    await new Promise((r) => setTimeout(r, 400));
    expect(lines(`${file}.1`)).toEqual(['opened', 'before the rotation']);
    expect(lines(file)).toEqual(['after the rotation']);
  });

  it('reopens only once nothing is being written and what is gathered has gone to the old file', () => {
    const calls: string[] = [];
    let drains: Array<() => void> = [];
    // A destination whose first drain comes while a periodic write has begun, lines still gathered.
    const destination: Reopenable = {
      _writing: true,
      flush: (cb) => { calls.push('flush'); drains.push(() => cb()); },
      flushSync: () => { calls.push(destination._writing ? 'flushSync while writing' : 'flushSync'); },
      reopen: () => { calls.push('reopen'); },
    };
    reopenAfterFlush(destination);
    expect(calls).toEqual(['flush']);
    const first = drains;
    drains = [];
    first.forEach((d) => d());
    // Still writing: it waits for the next drain, neither writing nor reopening meanwhile.
    expect(calls).toEqual(['flush', 'flush']);
    destination._writing = false;
    drains.forEach((d) => d());
    expect(calls).toEqual(['flush', 'flush', 'flushSync', 'reopen']);
  });
});
