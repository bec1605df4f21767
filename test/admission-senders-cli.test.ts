// Known senders end to end, against a running Ichidan (a child process): real mail (swaks) from a
// client address is learned, `ichidan senders list` shows its network known, the metric counts it;
// then pin, block (the door then turns it away) and forget it from the CLI; bad keys and absent entries are exit 1
// with the reason; with admission.mode off nothing is learned.
import { execFile } from 'node:child_process';
import { request } from 'node:http';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { stringify } from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { baseConfig, startApp, waitUntil } from './helpers/app.js';
import { CLI, startChild, type ChildIchidan } from './helpers/child.js';
import { startSink, type Sink } from './helpers/sink.js';

const exec = promisify(execFile);

function metrics(socket: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const req = request({ socketPath: socket, path: '/metrics', headers: { host: 'localhost' } }, (res) => {
      let body = '';
      res.on('data', (d) => { body += d; });
      res.on('end', () => resolve(body));
    });
    req.on('error', reject);
    req.end();
  });
}

describe('ichidan senders against a running Ichidan', () => {
  let sink: Sink;
  let dir: string;
  let child: ChildIchidan;
  const file = () => join(dir, 'ichidan.yaml');
  const cli = (...args: string[]) => exec(process.execPath, [CLI, 'senders', ...args, '-c', file()]);
  const fails = (...args: string[]) => cli(...args).then(
    (r) => { throw new Error(`expected exit 1, got: ${r.stdout}`); },
    (e: { code: number; stderr: string }) => ({ code: e.code, stderr: e.stderr }),
  );
  const send = (from: string) => exec('swaks', ['--server', `127.0.0.1:${child.ports.mx}`, '--local-interface', from, '--helo', 'sender.test',
    '--from', 'someone@sender.test', '--to', 'user@example.test', '--hide-informational']);

  beforeAll(async () => {
    sink = await startSink({ host: '127.0.0.2' });
    dir = await mkdtemp(join(tmpdir(), 'ichidan-senders-cli-'));
    await writeFile(file(), stringify(baseConfig(join(dir, 'data'), {
      listeners: [{ name: 'mx', role: 'mx', port: 0 }],
      tenants: { demo: { domains: ['example.test'] } },
      routes: { 'example.test': { host: '127.0.0.2', port: sink.port } },
      admission: { senders: { minClean: 3, flushEvery: '200ms' } },
    })));
    child = await startChild(file());
  });
  afterAll(async () => {
    if (child) {
      child.proc.kill('SIGTERM');
      await child.exited;
    }
    await sink?.close();
    await rm(dir, { recursive: true, force: true });
  });

  it('learns a client network from real mail, then pins, blocks and forgets it', async () => {
    expect((await cli('list')).stdout).toBe('key\tstanding\tclean\trefused\tspam\tscore\tfirst_seen\tlast_seen\tmark\n');
    for (let i = 0; i < 3; i++) await send('127.0.0.7');
    await send('127.1.2.3');
    const list = (await cli('list')).stdout.split('\n');
    expect(list[0]).toBe('key\tstanding\tclean\trefused\tspam\tscore\tfirst_seen\tlast_seen\tmark');
    expect(list).toContainEqual(expect.stringMatching(/^127\.0\.0\.0\/24\tknown\t3\t0\t0\t-\t\d{4}-.*Z\t\d{4}-.*Z\t$/));
    expect(list).toContainEqual(expect.stringMatching(/^127\.1\.2\.0\/24\tunknown\t1\t0\t0\t/));
    const known = JSON.parse((await cli('list', '--standing', 'known', '--json')).stdout) as { total: number; senders: Array<{ key: string }> };
    expect(known).toMatchObject({ total: 1, senders: [{ key: '127.0.0.0/24' }] });
    expect(JSON.parse((await cli('list', '--kind', 'user', '--json')).stdout)).toEqual({ total: 0, senders: [] });
    expect((await cli('list', '--limit', '1')).stdout).toMatch(/\(1 of 2; --limit shows more\)\n$/);
    const socket = join(dir, 'data', 'admin.sock');
    expect(await metrics(socket)).toMatch(/^ichidan_admission_senders\{kind="network",standing="known"\} 1$/m);
    expect(await metrics(socket)).toMatch(/^ichidan_admission_senders\{kind="network",standing="unknown"\} 1$/m);

    expect((await cli('pin', '127.0.0.99', '--note', 'partner relay')).stdout).toBe('127.0.0.0/24: pinned\n');
    expect((await cli('show', '127.0.0.0/24')).stdout).toMatch(/^127\.0\.0\.0\/24\tpinned\t3\t.*\tpinned by \S+ \d{4}-.*Z: partner relay\n$/m);
    expect((await cli('block', '127.0.0.7')).stdout).toBe('127.0.0.0/24: blocked\n');
    expect(JSON.parse((await cli('show', '127.0.0.7', '--json')).stdout)).toMatchObject({ standing: 'blocked', clean: 3, mark: { flag: 'blocked', note: null } });
    await waitUntil(async () => /standing="blocked"\} 1$/m.test(await metrics(socket)), 5000, 'the metric to count the block');
    // The door turns a blocked network away at connect.
    await expect(send('127.0.0.8')).rejects.toMatchObject({ stdout: expect.stringMatching(/<\*\* 554 5\.7\.1/) });
    expect((await cli('forget', '127.0.0.7')).stdout).toBe('127.0.0.0/24: forgotten\n');
    expect(await fails('show', '127.0.0.7')).toEqual({ code: 1, stderr: 'no known-sender entry for 127.0.0.7\n' });
    expect(await fails('forget', '127.0.0.7')).toEqual({ code: 1, stderr: 'no known-sender entry for 127.0.0.7\n' });
    // It is learned again from scratch.
    await send('127.0.0.7');
    expect(JSON.parse((await cli('show', '127.0.0.7', '--json')).stdout)).toMatchObject({ standing: 'unknown', clean: 1, mark: null });
  }, 60_000);

  it('refuses keys that name nothing, with the forms that exist', async () => {
    expect(await fails('show', 'mail.example.com')).toEqual({ code: 1, stderr: expect.stringMatching(/"mail\.example\.com" is not a sender key: use an address or network .*user:NAME, domain:example\.com or resolver:ADDR/) });
    expect(await fails('pin', '127.0.0.0/16')).toEqual({ code: 1, stderr: expect.stringMatching(/kept per \/24 \(admission\.senders\.ipv4Prefix\)/) });
    expect(await fails('list', '--standing', 'famous')).toEqual({ code: 1, stderr: '"standing" must be one of pinned, known, unknown, blocked\n' });
    expect(await fails('list', '--kind', 'planet')).toEqual({ code: 1, stderr: '"kind" must be one of network, user, domain, resolver\n' });
    expect(await fails('list', '--limit', '0')).toEqual({ code: 1, stderr: '"limit" must be a number from 1 to 10000\n' });
    await expect(cli('frobnicate', 'x')).rejects.toMatchObject({ code: 2, stderr: expect.stringMatching(/ichidan senders list/) });
  });

  it('keeps what it learned across a restart', async () => {
    await cli('pin', 'domain:partner.example', '--note', 'contract 12');
    child.proc.kill('SIGTERM');
    await child.exited;
    child = await startChild(file());
    expect(JSON.parse((await cli('show', 'domain:partner.example', '--json')).stdout)).toMatchObject({ standing: 'pinned', mark: { note: 'contract 12' } });
    expect(JSON.parse((await cli('show', '127.1.2.3', '--json')).stdout)).toMatchObject({ standing: 'unknown', clean: 1 });
  }, 30_000);
});

describe('known senders with admission.mode off', () => {
  it('learns nothing', async () => {
    const sink = await startSink({ host: '127.0.0.2' });
    const t = await startApp((dir) => baseConfig(dir, {
      tenants: { demo: { domains: ['example.test'] } },
      routes: { 'example.test': { host: '127.0.0.2', port: sink.port } },
      admission: { mode: 'off' },
    }));
    try {
      await exec('swaks', ['--server', `127.0.0.1:${t.port()}`, '--local-interface', '127.0.0.7', '--from', 'a@sender.test', '--to', 'user@example.test', '--hide-all']);
      expect(t.app.senders?.size).toBe(0);
      t.app.reconfigure({ ...t.app.config, admission: { ...t.app.config.admission, mode: 'on' } });
      await exec('swaks', ['--server', `127.0.0.1:${t.port()}`, '--local-interface', '127.0.0.7', '--from', 'a@sender.test', '--to', 'user@example.test', '--hide-all']);
      expect(t.app.senders?.show({ kind: 'network', key: '127.0.0.0/24' })).toMatchObject({ clean: 1 });
    } finally {
      await t.stop();
      await sink.close();
    }
  });
});
