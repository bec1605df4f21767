// Startup reconciliation of the spool against the queue records: a record without a file, a file
// without a record and a truncated file are set aside as corrupt and reported (log and CLI), in
// process and when the real process starts.
import { execFile } from 'node:child_process';
import { mkdir, mkdtemp, readdir, rm, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { startApp } from './helpers/app.js';
import { CLI, startChild } from './helpers/child.js';
import { heldConfig, sendOne, spoolFiles } from './helpers/held-mail.js';
import { recordsDb } from './helpers/records.js';

const run = promisify(execFile);

async function writeConfig(dataDir: string): Promise<string> {
  const file = join(dataDir, 'config.yaml');
  await writeFile(file, `dataDir: ${dataDir}\nlisteners: [{ name: mx, role: mx, port: 0 }]\ntenants: { alpha: { domains: [alpha.test] } }\n`);
  return file;
}

describe('startup reconciliation', () => {
  it('sets aside a record without a file, a file without a record and a truncated file, and reports them', async () => {
    const dataDir = await mkdtemp(join(tmpdir(), 'ichidan-reconcile-'));
    try {
      let t = await startApp(heldConfig, { dataDir });
      const ids: string[] = [];
      for (const body of ['one', 'two', 'three']) ids.push((await sendOne(t.port(), body)).split(' ').pop()!);
      await t.stop();

      await rm(join(dataDir, 'spool', ids[0]));
      await truncate(join(dataDir, 'spool', ids[1]), 5);
      const orphan = '1M00000000000000';
      await writeFile(join(dataDir, 'spool', orphan), 'Subject: orphan\r\n\r\nno record\r\n');

      t = await startApp(heldConfig, { dataDir });
      const warnings = t.logs.filter((l) => l.msg === 'queue entry set aside as corrupt').map((l) => [l.qid, l.reason]);
      expect(warnings).toEqual(expect.arrayContaining([
        [ids[0], 'spool file missing'],
        [ids[1], expect.stringMatching(/^spool file is 5 bytes/)],
        [orphan, expect.stringMatching(/without a queue record/)],
      ]));
      expect(warnings).toHaveLength(3);
      expect((await readdir(join(dataDir, 'spool', 'corrupt'))).sort()).toEqual([ids[1], orphan].sort());
      expect(await spoolFiles(dataDir)).toEqual([ids[2]]);
      await t.stop();

      // The CLI reports them too.
      const cli = await run(process.execPath, [CLI, 'queue', '-c', await writeConfig(dataDir)]);
      expect(cli.stdout).toContain(`corrupt\t${ids[0]}\tspool file missing`);
      expect(cli.stdout).toContain(`corrupt\t${orphan}\t`);
      expect(cli.stdout).toMatch(/alpha\tqueued\t1|alpha\theld\t1/);
      const db = recordsDb(dataDir);
      expect(db.prepare(`SELECT COUNT(*) AS n FROM messages WHERE state = 'corrupt'`).get()).toEqual({ n: 3 });
      db.close();
    } finally {
      await rm(dataDir, { recursive: true, force: true });
    }
  });

  it('finishes reconciling, becomes ready, and stops cleanly', async () => {
    const dataDir = await mkdtemp(join(tmpdir(), 'ichidan-start-'));
    try {
      await mkdir(join(dataDir, 'spool'), { recursive: true });
      const orphan = '1M00000000000001';
      await writeFile(join(dataDir, 'spool', orphan), 'Subject: orphan\r\n\r\nno record\r\n');
      const child = await startChild(await writeConfig(dataDir));
      expect(child.ports.mx).toBeGreaterThan(0);
      child.proc.kill('SIGTERM');
      expect(await child.exited).toBe(0);
      const cli = await run(process.execPath, [CLI, 'queue', '-c', join(dataDir, 'config.yaml')]);
      expect(cli.stdout).toContain(`corrupt\t${orphan}\t`);
    } finally {
      await rm(dataDir, { recursive: true, force: true });
    }
  });
});
