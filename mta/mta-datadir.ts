/*
 * The data folder is Ichidan's alone: the queue database (and its WAL and shared-memory files),
 * the spool, the generated TLS key, the space reserve and the admin socket hold mail, keys and
 * control, so nobody but Ichidan's user may read them.
 *
 * Takes: `dataDir`, at start, before anything in it is opened.
 * Gives: dataDir made (mode 0700) if missing; every folder under it at 0700 and every other entry
 *   at 0600, fixed where wider (from an older version, a restored backup, a hand-made folder),
 *   with one log line saying how many and which. The files made later set the same modes
 *   themselves when they are created (spool, queue database, TLS, reserve, admin socket).
 * Touches: the file system under dataDir only; symbolic links are left alone (never followed).
 * Settings: dataDir.
 */
import { chmod, lstat, mkdir, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import type { Logger } from 'pino';

export const DIR_MODE = 0o700;
export const FILE_MODE = 0o600;

const EXAMPLES = 5;

export async function secureDataDir(dataDir: string, log: Logger): Promise<void> {
  await mkdir(dataDir, { recursive: true, mode: DIR_MODE });
  const fixed: Array<{ path: string; was: string }> = [];
  const visit = async (path: string): Promise<void> => {
    const st = await lstat(path);
    if (st.isSymbolicLink()) return;
    const want = st.isDirectory() ? DIR_MODE : FILE_MODE;
    if ((st.mode & 0o777 & ~want) !== 0) {
      await chmod(path, want);
      fixed.push({ path, was: (st.mode & 0o777).toString(8) });
    }
    if (st.isDirectory()) for (const name of await readdir(path)) await visit(join(path, name));
  };
  await visit(dataDir);
  if (fixed.length > 0) {
    log.warn({ dataDir, fixed: fixed.length, examples: fixed.slice(0, EXAMPLES) },
      'data folder entries were readable by other users: folders set to 0700, files to 0600');
  }
}
