/*
 * An rspamd of the test's own, for checks the shared one cannot make: the shared rspamd of
 * scripts/engines.sh has its DKIM module off and its resolver on 127.0.0.1:53, where nothing
 * answers. This one has the DKIM module on and asks the test's DNS server (test/helpers/dns-server.ts),
 * so a DKIM signature is checked against the key the test publishes; everything else is as
 * engines.sh configures rspamd (the network and Redis modules off), and nothing leaves the machine.
 *
 * Takes: the DNS server's "127.0.0.1:port". Gives: the normal worker's port and `check(message,
 * headers)` (POST /checkv2: the symbols it found), `stop()` (its process, by pid, and its folder).
 * The compiled regexp cache is kept between runs in the system temp folder, so only the first
 * start on a machine takes long. Without rspamd installed `startPrivateRspamd` throws; callers
 * decide (CI: a failure, see test/helpers/daemons.ts).
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { closedPort } from './engine-contract.js';

export interface PrivateRspamd {
  port: number;
  pid(): number | undefined;
  /** rspamd's verdict on `message`: its symbols by name. */
  check(message: Buffer, headers: Record<string, string>): Promise<Record<string, { score: number; options?: string[] }>>;
  stop(): Promise<void>;
}

/** Modules that fetch maps over HTTP, query DNS lists or need Redis (as in scripts/engines.sh), less `dkim`. */
const OFF = ['rbl', 'fuzzy_check', 'phishing', 'multimap', 'rspamd_update', 'spf', 'dkim_signing', 'dmarc', 'arc', 'greylist',
  'ratelimit', 'neural', 'reputation', 'history_redis', 'asn', 'emails', 'url_redirector', 'whitelist', 'mid', 'replies', 'mime_types',
  'metadata_exporter', 'clickhouse', 'elastic', 'dcc', 'external_services', 'antivirus', 'p0f', 'mx_check', 'metric_exporter',
  'bimi', 'aws_s3', 'spamtrap', 'hfilter'];

export function rspamdInstalled(): boolean {
  return spawnSync('rspamd', ['--version'], { stdio: 'ignore' }).status === 0;
}

async function ping(port: number): Promise<boolean> {
  try {
    const res = await fetch(`http://127.0.0.1:${port}/ping`, { signal: AbortSignal.timeout(1000) });
    return (await res.text()).includes('pong');
  } catch {
    return false;
  }
}

export async function startPrivateRspamd(dnsServer: string): Promise<PrivateRspamd> {
  const dir = await mkdtemp(join(tmpdir(), 'ichidan-rspamd-'));
  const cache = join(tmpdir(), 'ichidan-rspamd-hs-cache');
  const conf = join(dir, 'conf');
  await Promise.all([join(conf, 'local.d'), join(conf, 'override.d'), join(dir, 'db'), join(dir, 'run'), join(dir, 'log'), join(dir, 'tmp'), cache]
    .map((d) => mkdir(d, { recursive: true })));
  const port = await closedPort();
  await writeFile(join(conf, 'override.d', 'worker-normal.inc'), `bind_socket = "127.0.0.1:${port}";\n`);
  for (const worker of ['controller', 'proxy', 'fuzzy']) await writeFile(join(conf, 'override.d', `worker-${worker}.inc`), 'enabled = false;\n');
  await writeFile(join(conf, 'local.d', 'options.inc'),
    `dns {\n  nameserver = ["${dnsServer}"];\n  timeout = 1s;\n  retransmits = 2;\n}\ntempdir = "${join(dir, 'tmp')}";\nhs_cache_dir = "${cache}";\n`);
  await writeFile(join(conf, 'local.d', 'logging.inc'), 'level = "notice";\n');
  for (const module of OFF) await writeFile(join(conf, 'local.d', `${module}.conf`), 'enabled = false;\n');
  const root = process.getuid?.() === 0;
  // As root rspamd runs as its own user, which must own what it writes.
  if (root) spawnSync('chown', ['-R', '_rspamd:_rspamd', dir, cache]);
  const proc: ChildProcess = spawn('rspamd', [
    '-f', ...(root ? ['-u', '_rspamd', '-g', '_rspamd'] : []), '-c', '/etc/rspamd/rspamd.conf',
    `--var=LOCAL_CONFDIR=${conf}`, `--var=DBDIR=${join(dir, 'db')}`, `--var=RUNDIR=${join(dir, 'run')}`, `--var=LOGDIR=${join(dir, 'log')}`,
  ], { stdio: 'ignore' });
  const rspamd: PrivateRspamd = {
    port,
    pid: () => proc.pid,
    async check(message, headers) {
      const res = await fetch(`http://127.0.0.1:${port}/checkv2`, { method: 'POST', headers, body: new Uint8Array(message), signal: AbortSignal.timeout(20_000) });
      if (!res.ok) throw new Error(`rspamd /checkv2: HTTP ${res.status}`);
      return ((await res.json()) as { symbols: Record<string, { score: number; options?: string[] }> }).symbols;
    },
    async stop() {
      if (proc.exitCode === null && proc.signalCode === null) {
        const gone = new Promise((r) => proc.once('exit', r));
        proc.kill('SIGTERM');
        await Promise.race([gone, new Promise((r) => setTimeout(r, 5000))]);
        if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGKILL');
      }
      await rm(dir, { recursive: true, force: true });
    },
  };
  // The first start on a machine compiles its regexps (a minute or more); later ones use the cache.
  const until = Date.now() + 180_000;
  while (!(await ping(port))) {
    if (proc.exitCode !== null) {
      await rspamd.stop();
      throw new Error(`private rspamd exited with ${proc.exitCode}; see ${join(dir, 'log', 'rspamd.log')}`);
    }
    if (Date.now() > until) {
      await rspamd.stop();
      throw new Error('private rspamd did not answer /ping within 180 s');
    }
    await new Promise((r) => setTimeout(r, 200));
  }
  return rspamd;
}
