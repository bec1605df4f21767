/*
 * Private Postfix instances for the benchmarks: each with its own main.cf, master.cf, queue and
 * data folders and log file under var/, listening on one loopback address, started with
 * `master -c DIR -w` and stopped by its master's pid.
 *
 * Takes: a name (used in the folder and host names), the loopback address to listen on, and
 * main.cf settings that add to or replace the base ones (e.g. transport_maps, relay limits).
 * Gives: the running instance (port, master pid, log file, folder) and `stop()`, which ends the
 * master, waits for its children, kills any left (`stopPostfixMaster`, also for a master started
 * elsewhere), and removes the folder; `transportMap(routes)`,
 * an inline transport map sending each domain to one loopback host and port.
 * Network: only the loopback address given. DNS is off for the SMTP client, smtpd does not look up
 * client names, and next hops are bracketed addresses, so no lookup leaves the machine.
 * Needs root and Debian's postfix package (its daemons run as the `postfix` user).
 */
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { chmod, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { onCleanup, sleep } from './bench-cleanup.js';
import { processTree } from './bench-proc.js';
import { freePort } from './bench-util.js';

/** The project folder, whether this runs built (dist/bench) or from source (a test under vitest). */
const ROOT = [join(import.meta.dirname, '..'), join(import.meta.dirname, '..', '..')].find((d) => existsSync(join(d, 'package.json')))!;
const MASTER = '/usr/lib/postfix/sbin/master';

export interface PostfixInstance {
  name: string;
  address: string;
  port: number;
  dir: string;
  maillog: string;
  masterPid: number;
  stop(): Promise<void>;
}

export interface Route { host: string; port: number }

/** `inline:{ a.example=smtp:[127.0.0.31]:2525, … }`: brackets, so the host is used as is, no MX lookup. */
export function transportMap(routes: Record<string, Route>): string {
  return `inline:{ ${Object.entries(routes).map(([domain, r]) => `${domain}=smtp:[${r.host}]:${r.port}`).join(', ')} }`;
}

function mainCf(dir: string, name: string, extra: Record<string, string>): string {
  const settings: Record<string, string> = {
    compatibility_level: '3.6',
    queue_directory: join(dir, 'queue'),
    data_directory: join(dir, 'data'),
    mail_owner: 'postfix',
    myhostname: `${name}.postfix.bench.test`,
    mydestination: '',
    // Postfix accepts only addresses of an interface here, and lo has 127.0.0.1 alone: the listener's
    // own address (any 127.0.0.x) is given in master.cf instead.
    inet_interfaces: '127.0.0.1',
    inet_protocols: 'ipv4',
    mynetworks: '127.0.0.0/8',
    smtpd_relay_restrictions: 'permit_mynetworks, reject',
    smtp_dns_support_level: 'disabled',
    // With DNS off the SMTP client still asks the system resolver for a bare name: a domain without a
    // route (a bounce to a sender's domain, say) fails here instead of being looked up.
    default_transport: 'error:no route in this benchmark',
    // The tenants connect from 127.0.0.21-23, which /etc/hosts does not name: a lookup would go out.
    smtpd_peername_lookup: 'no',
    alias_maps: '',
    alias_database: '',
    local_recipient_maps: '',
    maillog_file: join(dir, 'maillog'),
    maillog_file_prefixes: dir,
    ...extra,
  };
  return Object.entries(settings).map(([k, v]) => `${k} = ${v}`).join('\n') + '\n';
}

/** Debian's master.cf with the SMTP listener moved to address:port and no chroot (the private queue is no jail). */
async function masterCf(address: string, port: number): Promise<string> {
  return (await readFile('/etc/postfix/master.cf', 'utf8')).split('\n').map((line) => {
    if (/^smtp\s+inet\s/.test(line)) return `${address}:${port} inet n - n - - smtpd`;
    return line.replace(/^(\S+\s+(?:unix|inet|fifo|pass|unix-dgram)\s+\S+\s+\S+\s+)y(\s)/, '$1n$2');
  }).join('\n');
}

/** The queue folders with the owners and modes postfix-script would give them. */
async function makeQueue(dir: string): Promise<void> {
  const queue = join(dir, 'queue');
  const owned = ['active', 'bounce', 'corrupt', 'defer', 'deferred', 'flush', 'hold', 'incoming', 'private', 'saved', 'trace'];
  for (const d of [...owned, 'maildrop', 'public', 'pid']) await mkdir(join(queue, d), { recursive: true });
  await mkdir(join(dir, 'data'), { recursive: true });
  execFileSync('chown', ['postfix:root', ...owned.map((d) => join(queue, d)), join(dir, 'data')]);
  execFileSync('chmod', ['700', ...owned.map((d) => join(queue, d))]);
  execFileSync('chown', ['postfix:postdrop', join(queue, 'maildrop'), join(queue, 'public')]);
  execFileSync('chmod', ['730', join(queue, 'maildrop')]);
  execFileSync('chmod', ['710', join(queue, 'public')]);
}

/**
 * Whether pid is still one of this instance's processes (and not a stranger that reused the pid):
 * the master was started with `-c etc`, its children inherit MAIL_CONFIG=etc.
 */
function ownProcess(pid: number, etc: string): boolean {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'latin1').split('\0').includes(etc)
      || readFileSync(`/proc/${pid}/environ`, 'latin1').split('\0').includes(`MAIL_CONFIG=${etc}`);
  } catch {
    return false;
  }
}

/**
 * Ends the master started with `-c etc` and every process of its tree: SIGTERM (which the master passes
 * on to its children), up to 5 s for them to exit, then SIGKILL for any left.
 */
export async function stopPostfixMaster(masterPid: number, etc: string): Promise<void> {
  const tree = processTree(masterPid);
  try { process.kill(masterPid, 'SIGTERM'); } catch { return; }
  for (let i = 0; i < 50 && tree.some((pid) => existsSync(`/proc/${pid}`)); i++) await sleep(100);
  for (const pid of tree.filter((p) => ownProcess(p, etc))) {
    try { process.kill(pid, 'SIGKILL'); } catch { /* gone meanwhile */ }
  }
}

/**
 * `opts.netns`: the instance runs inside that network namespace (`ip netns exec`), where `address`
 * is one of the namespace's and the system resolver reads /etc/netns/<name>/resolv.conf (a test
 * that turns DNS on for the SMTP client points it at a resolver of its own there).
 */
export async function startPostfix(name: string, address: string, extra: Record<string, string>, opts: { netns?: string } = {}): Promise<PostfixInstance> {
  // Not under var/: that is the default dataDir, which Ichidan closes to other users at start, and
  // Postfix's daemons run as its own user and must reach the queue below.
  await mkdir(join(ROOT, 'state'), { recursive: true, mode: 0o755 });
  const dir = await mkdtemp(join(ROOT, 'state', `bench-postfix-${name}-`));
  await chmod(dir, 0o755);
  const removeDir = onCleanup(() => rm(dir, { recursive: true, force: true }));
  const port = await freePort(address);
  const etc = join(dir, 'etc');
  await mkdir(etc);
  await writeFile(join(etc, 'main.cf'), mainCf(dir, name, extra));
  await writeFile(join(etc, 'master.cf'), await masterCf(address, port));
  await makeQueue(dir);
  if (opts.netns) execFileSync('ip', ['netns', 'exec', opts.netns, MASTER, '-c', etc, '-w']);
  else execFileSync(MASTER, ['-c', etc, '-w']);
  const masterPid = Number((await readFile(join(dir, 'queue', 'pid', 'master.pid'), 'utf8')).trim());
  const stopMaster = onCleanup(() => stopPostfixMaster(masterPid, etc));
  return {
    name, address, port, dir, masterPid, maillog: join(dir, 'maillog'),
    async stop() {
      await stopMaster();
      await removeDir();
    },
  };
}
