// The data folder and everything in it are readable only by Ichidan's user, whatever the umask:
// folders 0700, files (queue database, WAL, shared memory, spool files, TLS key and certificate,
// space reserve, admin socket) 0600; wider modes left by an earlier run are narrowed at start.
import { chmod, lstat, mkdir, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { baseConfig, startApp, waitUntil } from './helpers/app.js';
import { RawSmtp } from './helpers/raw-smtp.js';
import { startSink, type Sink } from './helpers/sink.js';

/** Every entry under `dir` (itself included) whose permission bits are not 0700 (folders) or 0600 (the rest). */
async function wrongModes(dir: string): Promise<string[]> {
  const wrong: string[] = [];
  const visit = async (path: string) => {
    const st = await lstat(path);
    const want = st.isDirectory() ? 0o700 : 0o600;
    if ((st.mode & 0o777) !== want) wrong.push(`${path.slice(dir.length) || '/'} ${(st.mode & 0o777).toString(8)}`);
    if (st.isDirectory()) for (const name of await readdir(path)) await visit(join(path, name));
  };
  await visit(dir);
  return wrong;
}

async function entries(dir: string): Promise<string[]> {
  const out: string[] = [];
  const visit = async (path: string) => {
    out.push(path.slice(dir.length) || '/');
    if ((await lstat(path)).isDirectory()) for (const name of await readdir(path)) await visit(join(path, name));
  };
  await visit(dir);
  return out;
}

describe('data folder permissions', () => {
  let sink: Sink;
  let umask: number;
  beforeAll(async () => {
    sink = await startSink({ host: '127.0.0.2' });
    // The widest umask: every mode must be set by Ichidan itself, not left to the environment.
    umask = process.umask(0);
  });
  afterAll(async () => {
    process.umask(umask);
    await sink?.close();
  });

  it('narrows wider modes at start, logging it, and keeps everything 0700/0600 after mail flows', async () => {
    const dataDir = await mkdtemp(join(tmpdir(), 'ichidan-modes-'));
    try {
      // What an earlier version (or a careless restore) left behind.
      await mkdir(join(dataDir, 'spool', 'corrupt'), { recursive: true, mode: 0o755 });
      await writeFile(join(dataDir, 'queue.db'), '', { mode: 0o644 });
      await chmod(dataDir, 0o755);
      const t = await startApp((dir) => baseConfig(dir, {
        trustedNetworks: ['127.0.0.1/32'],
        queue: { retryInitial: '200ms', retryMax: '200ms', retryJitter: 0, minFree: 0, reserve: '64KB' },
        routes: { 'far.test': { host: '127.0.0.2', port: sink.port }, 'held.test': { hold: true } },
      }), { dataDir });
      try {
        const warning = t.logs.find((l) => l.msg === 'data folder entries were readable by other users: folders set to 0700, files to 0600');
        expect(warning?.fixed).toBe(4);
        expect(await wrongModes(dataDir)).toEqual([]);

        const c = await RawSmtp.atData(t.port(), 'me@sender.test', ['a@far.test', 'b@held.test']);
        const id = await c.finishData(`Subject: modes\r\n\r\n${'line\r\n'.repeat(100)}`);
        await c.command('QUIT');
        c.close();
        await sink.waitFor(1);
        await waitUntil(() => t.app.queue.store.recipientsOf(id).some((r) => r.state === 'held'));
        const present = await entries(dataDir);
        for (const name of ['/queue.db', '/queue.db-wal', '/queue.db-shm', `/spool/${id}`, '/tls/self-signed.key', '/tls/self-signed.crt', '/reserve', '/admin.sock']) {
          expect(present).toContain(name);
        }
        expect(await wrongModes(dataDir)).toEqual([]);
      } finally {
        await t.stop();
      }
    } finally {
      await rm(dataDir, { recursive: true, force: true });
    }
  });
});
