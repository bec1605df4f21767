/*
 * The file system a relay run writes its queue to, so that the device counter counts what a mail
 * server's disk would: data, metadata and the filesystem journal.
 *
 * As root, and unless BENCH_FS=host: a fresh ext4 made by `mkfs.ext4 -q` with its defaults (a 64 MB
 * journal, data=ordered, a commit every 5 s) in a sparse 4 GiB image under state/, attached with
 * `losetup --find --show` and mounted on a folder beside it. Nothing else on the machine writes to
 * that loop device, and its journal has its own counters in /proc/fs/jbd2/<device>-8/info.
 * With BENCH_FS=host (or without root): var/ as it is, on whatever the host's file system is; on a
 * host ext4 without a journal the figures then leave out the journal writes a real server pays.
 *
 * Gives: `benchFsLabel()`, which file system the runs use, for the top of the output;
 * `mountBenchFs()`, which sets one up and returns its folder, its device (as /proc/diskstats names
 * it) and `cleanUp()` (unmount, detach, delete the image; safe to call twice; registered with
 * bench-cleanup so an error or SIGINT / SIGTERM runs it, and run on process exit as a last resort);
 * `journalWritten(device)`, the journal's transactions and logged blocks so far.
 * Needs: root, util-linux (losetup, mount) and e2fsprogs for the loop file system.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { chmod, mkdir, mkdtemp } from 'node:fs/promises';
import { join } from 'node:path';
import { onCleanup } from './bench-cleanup.js';
import { deviceOf } from './bench-proc.js';

/** The project folder, whether this runs built (dist/bench) or from source. */
const ROOT = [join(import.meta.dirname, '..'), join(import.meta.dirname, '..', '..')].find((d) => existsSync(join(d, 'package.json')))!;
const IMAGE_SIZE = '4G';

export interface BenchFs {
  dir: string;
  device: string;
  cleanUp(): Promise<void>;
}

const onLoop = (): boolean => process.env.BENCH_FS !== 'host' && process.getuid?.() === 0;

export function benchFsLabel(): string {
  if (onLoop()) return `loop ext4 with journal (mkfs.ext4 defaults, data=ordered; a fresh ${IMAGE_SIZE} sparse image under state/ for each MTA run)`;
  const why = process.env.BENCH_FS === 'host' ? 'BENCH_FS=host' : 'not root';
  const var_ = join(ROOT, 'var');
  const mount = execFileSync('findmnt', ['-n', '-o', 'SOURCE,FSTYPE,OPTIONS', '-T', existsSync(var_) ? var_ : ROOT], { encoding: 'utf8' }).trim();
  return `host (${why}): ${mount}`;
}

/** Blocks the thread: the exit hook cannot wait for a timer. */
function pause(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

/** Unmounts, waiting up to 10 s for processes that are still leaving it, then lazily as a last resort. */
function unmount(dir: string): void {
  for (let i = 0; i < 50; i++) {
    try {
      execFileSync('umount', [dir], { stdio: 'pipe' });
      return;
    } catch {
      pause(200);
    }
  }
  console.error(`bench: ${dir} still busy after 10 s; unmounting lazily`);
  execFileSync('umount', ['--lazy', dir]);
}

export async function mountBenchFs(): Promise<BenchFs> {
  const var_ = join(ROOT, 'var');
  if (!onLoop()) return { dir: var_, device: deviceOf(var_), cleanUp: async () => {} };
  // Not under var/ (the default dataDir, closed to other users at Ichidan's start): Postfix's
  // daemons run as its own user and must reach the queue below.
  const state = join(ROOT, 'state');
  await mkdir(state, { recursive: true, mode: 0o755 });
  const root = await mkdtemp(join(state, 'bench-fs-'));
  await chmod(root, 0o755);
  const image = join(root, 'ext4.img'), dir = join(root, 'mnt');
  let loop: string | null = null, mounted = false, done = false;
  // Synchronous, so that the exit hook can run it too; each step is undone once.
  const undo = (): void => {
    if (done) return;
    done = true;
    process.off('exit', undo);
    if (mounted) unmount(dir);
    // A device still held open (after a lazy unmount) is detached by the kernel once its last user closes it.
    if (loop) execFileSync('losetup', ['--detach', loop]);
    rmSync(root, { recursive: true, force: true });
  };
  process.on('exit', undo);
  const stop = onCleanup(async () => undo());
  try {
    execFileSync('truncate', ['-s', IMAGE_SIZE, image]);
    execFileSync('mkfs.ext4', ['-q', image]);
    loop = execFileSync('losetup', ['--find', '--show', image], { encoding: 'utf8' }).trim();
    await mkdir(dir);
    execFileSync('mount', [loop, dir]);
    mounted = true;
  } catch (err) {
    await stop();
    throw new Error('could not set up the loop file system (BENCH_FS=host measures on the host instead)', { cause: err });
  }
  return { dir, device: loop.replace(/^\/dev\//, ''), cleanUp: stop };
}

export interface JournalWritten { transactions: number; blocksLogged: number }

/**
 * The journal's counters for `device`, or null when its file system has no journal. The kernel prints
 * the logged blocks as an average per transaction rounded down, so the product is short by less than
 * one block per transaction.
 */
export function journalWritten(device: string): JournalWritten | null {
  const entry = existsSync('/proc/fs/jbd2') ? readdirSync('/proc/fs/jbd2').find((e) => e.startsWith(`${device}-`)) : undefined;
  if (!entry) return null;
  const info = readFileSync(join('/proc/fs/jbd2', entry, 'info'), 'utf8');
  const transactions = Number(/^(\d+) transactions/m.exec(info)?.[1] ?? 0);
  const perTransaction = Number(/(\d+) logged blocks per transaction/.exec(info)?.[1] ?? 0);
  return { transactions, blocksLogged: transactions * perTransaction };
}
