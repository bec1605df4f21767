/*
 * A c-icap of the test's own on a free loopback port, its virus_scan service (`avscan`) backed by
 * a clamd the test names (a private one, with the recommended limits): the shared daemons of
 * scripts/engines.sh are never restarted by a test. The settings are those of scripts/engines.sh.
 * Stopped by its own pid (the foreground process the test spawned).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { connect } from 'node:net';
import { arch, tmpdir } from 'node:os';
import { join } from 'node:path';
import { closedPort } from './engine-contract.js';

export interface PrivateIcap {
  host: string;
  port: number;
  service: string;
  stop(): Promise<void>;
}

const MODULES = [`/usr/lib/${arch() === 'arm64' ? 'aarch64' : 'x86_64'}-linux-gnu/c_icap`, '/usr/lib/c_icap'].find((d) => existsSync(join(d, 'virus_scan.so')));

function options(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect(port, '127.0.0.1', () => s.end(`OPTIONS icap://127.0.0.1:${port}/avscan ICAP/1.0\r\nHost: 127.0.0.1\r\nEncapsulated: null-body=0\r\nConnection: close\r\n\r\n`));
    let got = '';
    s.on('data', (d) => { got += d; });
    s.on('close', () => resolve(got.startsWith('ICAP/1.0 200')));
    s.on('error', () => resolve(false));
  });
}

export async function startPrivateIcap(clamd: { host: string; port: number }): Promise<PrivateIcap> {
  if (!MODULES) throw new Error('c-icap\'s virus_scan.so is not installed (libc-icap-mod-virus-scan; scripts/engines.sh start installs it)');
  const dir = await mkdtemp(join(tmpdir(), 'ichidan-icap-'));
  await mkdir(join(dir, 'tmp'));
  const port = await closedPort();
  await writeFile(join(dir, 'c-icap.conf'), [
    `PidFile ${join(dir, 'c-icap.pid')}`, `CommandsSocket ${join(dir, 'c-icap.ctl')}`, `Port 127.0.0.1:${port}`, `TmpDir ${join(dir, 'tmp')}`,
    `ServerLog ${join(dir, 'server.log')}`, `AccessLog ${join(dir, 'access.log')}`, 'DebugLevel 1', 'Timeout 60',
    'StartServers 1', 'MaxServers 1', 'MinSpareThreads 2', 'MaxSpareThreads 8', 'ThreadsPerChild 8', 'MaxMemObject 131072',
    `ModulesDir ${MODULES}`, `ServicesDir ${MODULES}`, 'TemplateDir /usr/share/c_icap/templates/', 'TemplateDefaultLanguage en',
    'LoadMagicFile /etc/c-icap/c-icap.magic', 'Module common clamd_mod.so', `clamd_mod.ClamdHost ${clamd.host}`, `clamd_mod.ClamdPort ${clamd.port}`,
    'Service antivirus_module virus_scan.so', 'ServiceAlias avscan virus_scan?allow204=on&sizelimit=off&mode=simple',
    'virus_scan.ScanFileTypes TEXT DATA EXECUTABLE ARCHIVE GIF JPEG MSOFFICE DOCUMENT', 'virus_scan.MaxObjectSize 25M',
    'virus_scan.PassOnError off', 'virus_scan.DefaultEngine clamd', '',
  ].join('\n'));
  const proc: ChildProcess = spawn('c-icap', ['-N', '-f', join(dir, 'c-icap.conf')], { stdio: 'ignore' });
  const stop = async () => {
    if (proc.exitCode === null && proc.signalCode === null) {
      const gone = new Promise((r) => proc.once('exit', r));
      proc.kill('SIGTERM');
      const killer = setTimeout(() => proc.kill('SIGKILL'), 5_000);
      await gone;
      clearTimeout(killer);
    }
    await rm(dir, { recursive: true, force: true });
  };
  const until = Date.now() + 20_000;
  while (!(await options(port))) {
    if (proc.exitCode !== null || Date.now() > until) {
      await stop();
      throw new Error(`private c-icap did not answer OPTIONS (exit ${proc.exitCode})`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  return { host: '127.0.0.1', port, service: 'avscan', stop };
}
