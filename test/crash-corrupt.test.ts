// Corrupt entries after SIGKILLs, and what an operator does with them: Ichidan under load is killed
// until a DATA transfer in progress leaves a spool file without a record. At the next start such
// files are "unacknowledged" (none of them got a 250); a message whose file was damaged while the
// process was down is "damaged". The operator lists and shows them, purge says they are corrupt
// instead of pretending, requeue refuses what cannot be delivered and requeues a damaged message
// once its file is back (delivered once), delete removes one, and the rest of the unacknowledged
// leftovers go by themselves after queue.leftoverRetention.
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, readdir, readFile, rm, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startChild, type ChildIchidan } from './helpers/child.js';
import { CrashLoad } from './helpers/crash-load.js';
import { RawSmtp } from './helpers/raw-smtp.js';
import { startSink, type Sink } from './helpers/sink.js';

const CLI = join(import.meta.dirname, '..', 'dist', 'mta', 'mta-main.js');
const MAX_ROUNDS = 8;
const SESSIONS = 12;

function cli(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [CLI, ...args], (err, stdout, stderr) => {
      resolve({ code: err ? Number((err as { code?: number }).code ?? 1) : 0, stdout, stderr });
    });
  });
}

describe('corrupt entries after SIGKILLs', () => {
  let far: Sink;
  let later: Sink;
  let laterAccepts = false;
  let dataDir: string;
  let configFile: string;
  const writeConfig = (retention: string) => writeFile(configFile, [
    `dataDir: ${dataDir}`,
    'hostname: crash.ichidan.test',
    'log: { level: warn }',
    'listeners: [{ name: mx, role: mx, port: 0 }]',
    'trustedNetworks: [127.0.0.1/32]',
    `queue: { retryInitial: 100ms, retryMax: 300ms, minFree: 0, reserve: 0, leftoverRetention: ${retention} }`,
    `routes: { "later.test": { host: 127.0.0.3, port: ${later.port} }, "*": { host: 127.0.0.2, port: ${far.port} } }`,
    '',
  ].join('\n'));

  beforeAll(async () => {
    far = await startSink({ host: '127.0.0.2' });
    later = await startSink({ host: '127.0.0.3', data: () => (laterAccepts ? undefined : { code: 451, text: '4.3.0 not yet' }) });
    dataDir = await mkdtemp(join(tmpdir(), 'ichidan-crash-corrupt-'));
    configFile = join(dataDir, 'config.yaml');
    await writeConfig('1h');
  });
  afterAll(async () => {
    await far?.close();
    await later?.close();
    await rm(dataDir, { recursive: true, force: true });
  });

  it('tells unacknowledged leftovers from damaged messages and lets an operator deal with each', async () => {
    // Large enough that a kill often lands while a file is being written.
    const load = new CrashLoad(() => `Subject: load\r\n\r\n${'body line of some length to fill the spool file\r\n'.repeat(2000)}`);
    const acknowledged = new Set<string>();
    const unacknowledged = async () => (await cli(['queue', 'corrupt', 'list', '-c', configFile])).stdout
      .split('\n').filter((l) => l.split('\t')[1] === 'unacknowledged').map((l) => l.split('\t')[0]);

    // A message the later.test destination defers: it stays queued through the kills.
    let child: ChildIchidan = await startChild(configFile);
    const c = await RawSmtp.atData(child.ports.mx, 'me@sender.test', ['keep@later.test']);
    const keep = await c.finishData('Subject: keep\r\nX-Token: keep\r\n\r\nthe message to damage and requeue\r\n');
    await c.command('QUIT');
    c.close();
    acknowledged.add(keep);

    let rounds = 0;
    while (rounds < MAX_ROUNDS && (await unacknowledged()).length === 0) {
      rounds++;
      const until = { stop: false };
      const sessions = load.run(child.ports.mx, SESSIONS, until);
      await new Promise((r) => setTimeout(r, 400 + Math.random() * 800));
      child.proc.kill('SIGKILL');
      await child.exited;
      until.stop = true;
      await sessions;
      for (const id of load.acknowledged.values()) acknowledged.add(id);
      // The next start sets aside what the kill left behind.
      child = await startChild(configFile);
    }
    const leftovers = await unacknowledged();
    console.log(`crash-corrupt: ${rounds} SIGKILL rounds, ${acknowledged.size} acknowledged, ${leftovers.length} unacknowledged leftovers`);
    expect(leftovers.length).toBeGreaterThan(0);
    // None of them was ever acknowledged.
    expect(leftovers.filter((id) => acknowledged.has(id))).toEqual([]);

    // Damage the deferred message while Ichidan is down.
    child.proc.kill('SIGTERM');
    expect(await child.exited).toBe(0);
    const keepFile = join(dataDir, 'spool', keep);
    const original = await readFile(keepFile);
    await truncate(keepFile, 10);
    child = await startChild(configFile);
    try {
      const list = await cli(['queue', 'corrupt', '-c', configFile]);
      expect(list.stdout).toMatch(new RegExp(`^${keep}\\tdamaged\\t.*\\t1 rcpt\\t<me@sender\\.test>\\tspool file is 10 bytes`, 'm'));
      const [u1, ...rest] = leftovers;

      const shown = await cli(['queue', 'corrupt', 'show', u1, '-c', configFile]);
      expect(shown.code).toBe(0);
      expect(shown.stdout).toMatch(new RegExp(`^${u1}\\tunacknowledged\\t`));
      expect(shown.stdout).toContain(`file: spool/corrupt/${u1}`);

      for (const id of [u1, keep]) {
        const purge = await cli(['queue', 'purge', '--message', id, '-c', configFile]);
        expect(purge.code).toBe(1);
        expect(purge.stderr).toContain(`message ${id} is set aside as corrupt`);
      }
      const refused = await cli(['queue', 'corrupt', 'requeue', u1, '-c', configFile]);
      expect(refused.code).toBe(1);
      expect(refused.stderr).toContain('never acknowledged');
      const tooShort = await cli(['queue', 'corrupt', 'requeue', keep, '-c', configFile]);
      expect(tooShort.code).toBe(1);
      expect(tooShort.stderr).toContain('is 10 bytes and the record says');

      // The file is restored (from a backup, say): requeued, delivered once.
      await writeFile(join(dataDir, 'spool', 'corrupt', keep), original);
      laterAccepts = true;
      const requeued = await cli(['queue', 'corrupt', 'requeue', keep, '-c', configFile]);
      expect(requeued).toMatchObject({ code: 0, stdout: `${keep}: requeued, 1 recipients queued or held\n` });
      const [delivered] = await later.waitFor(1, 10_000);
      expect(delivered.data.toString()).toContain('X-Token: keep');

      const deleted = await cli(['queue', 'corrupt', 'delete', u1, '-c', configFile]);
      expect(deleted).toMatchObject({ code: 0, stdout: `${u1}: deleted\n` });
      expect(existsSync(join(dataDir, 'spool', 'corrupt', u1))).toBe(false);
      expect(await unacknowledged()).toEqual(rest);
    } finally {
      child.proc.kill('SIGTERM');
      await child.exited;
    }

    // Past leftoverRetention the rest go by themselves.
    await writeConfig('1s');
    await new Promise((r) => setTimeout(r, 1100));
    child = await startChild(configFile);
    try {
      expect(await unacknowledged()).toEqual([]);
      expect((await readdir(join(dataDir, 'spool', 'corrupt'))).filter((f) => leftovers.includes(f))).toEqual([]);
      expect(later.messages).toHaveLength(1);
    } finally {
      child.proc.kill('SIGTERM');
      await child.exited;
    }
  }, 180_000);
});
