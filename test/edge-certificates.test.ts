// Certificates offered by the listeners, made by a test CA: SNI picks the pair for the name the
// client asks for (exact or wildcard), a listener's own pair stands in for tls.cert on it, a reload
// (in process, SIGHUP, `ichidan reload`) swaps a renewed pair in for new connections while open
// ones go on, and a broken renewal is refused naming its key while the pair in force stays.
import { execFile } from 'node:child_process';
import { mkdir, mkdtemp, rename, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { TLSSocket } from 'node:tls';
import { promisify } from 'node:util';
import { stringify } from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { baseConfig, startApp, waitUntil, type ConfigInput, type TestApp } from './helpers/app.js';
import { CLI, startChild, type ChildIchidan } from './helpers/child.js';
import { RawSmtp } from './helpers/raw-smtp.js';
import { makeTestCa, type TestCa } from './helpers/test-ca.js';

const exec = promisify(execFile);

interface Offered { cn: string; fingerprint: string }

/** The certificate a listener offers to a client asking for `servername` (STARTTLS, or implicit TLS). */
async function offered(port: number, how: 'starttls' | 'implicit', servername?: string): Promise<Offered & { c: RawSmtp }> {
  const c = await RawSmtp.open(port);
  if (how === 'starttls') {
    expect((await c.reply()).join('\n')).toMatch(/^220 /);
    await c.command('EHLO client.test');
    expect(await c.command('STARTTLS')).toMatch(/^220 /);
  }
  await c.startTls(servername);
  const cert = (c.socket as TLSSocket).getPeerCertificate();
  return { c, cn: String(cert.subject.CN), fingerprint: cert.fingerprint256 };
}

async function offeredAndClosed(port: number, how: 'starttls' | 'implicit', servername?: string): Promise<Offered> {
  const { c, cn, fingerprint } = await offered(port, how, servername);
  c.close();
  return { cn, fingerprint };
}

describe('certificates: SNI, per listener, reload', () => {
  let dir: string;
  let ca: TestCa;
  let t: TestApp;
  let file: string;
  const path = (name: string) => join(dir, name);

  async function issue(name: string, files: string, names = [name]): Promise<void> {
    const pair = await ca.issue(names);
    await writeFile(path(`${files}.crt`), pair.cert);
    await writeFile(path(`${files}.key`), pair.key);
  }

  const config = (data: string): ConfigInput => baseConfig(data, {
    listeners: [
      { name: 'mx', role: 'mx', port: 0 },
      { name: 'submission', role: 'submission', port: 0, tls: 'implicit', cert: path('submit.crt'), key: path('submit.key') },
    ],
    tls: {
      cert: path('default.crt'), key: path('default.key'),
      sni: {
        'mail.alpha.test': { cert: path('alpha.crt'), key: path('alpha.key') },
        '*.beta.test': { cert: path('beta.crt'), key: path('beta.key') },
      },
    },
  });

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'ichidan-certs-'));
    ca = await makeTestCa();
    await issue('mx.ichidan.test', 'default');
    await issue('submit.ichidan.test', 'submit');
    await issue('mail.alpha.test', 'alpha');
    await issue('*.beta.test', 'beta');
    file = path('ichidan.yaml');
    t = await startApp((data) => config(data));
    await writeFile(file, stringify(config(t.dataDir)));
  }, 60_000);

  afterAll(async () => {
    await t?.stop();
    await rm(dir, { recursive: true, force: true });
  });

  it.each([
    ['mx', 'starttls', 'mail.alpha.test', 'mail.alpha.test'],
    ['mx', 'starttls', 'MAIL.Alpha.Test', 'mail.alpha.test'],
    ['mx', 'starttls', 'smtp.beta.test', '*.beta.test'],
    ['mx', 'starttls', 'deep.smtp.beta.test', 'mx.ichidan.test'],
    ['mx', 'starttls', 'unknown.test', 'mx.ichidan.test'],
    ['mx', 'starttls', undefined, 'mx.ichidan.test'],
    ['submission', 'implicit', undefined, 'submit.ichidan.test'],
    ['submission', 'implicit', 'unknown.test', 'submit.ichidan.test'],
    ['submission', 'implicit', 'mail.alpha.test', 'mail.alpha.test'],
  ] as const)('%s (%s) asked for %s offers %s', async (listener, how, servername, cn) => {
    expect((await offeredAndClosed(t.port(listener), how, servername)).cn).toBe(cn);
  });

  it('offers a renewed pair to new connections after a reload, while an open connection goes on', async () => {
    const before = await offered(t.port('mx'), 'starttls');
    expect(await before.c.command('EHLO client.test')).toMatch(/^250/);
    await issue('mx.ichidan.test', 'default');
    await issue('mail.alpha.test', 'alpha');
    await issue('submit.ichidan.test', 'submit');
    const alphaBefore = await offeredAndClosed(t.port('mx'), 'starttls', 'mail.alpha.test');
    const submitBefore = await offeredAndClosed(t.port('submission'), 'implicit');
    expect(t.app.reload(file)).toMatchObject({ ok: true, needsRestart: [] });
    const after = await offeredAndClosed(t.port('mx'), 'starttls');
    expect(after.cn).toBe('mx.ichidan.test');
    expect(after.fingerprint).not.toBe(before.fingerprint);
    expect((await offeredAndClosed(t.port('mx'), 'starttls', 'mail.alpha.test')).fingerprint).not.toBe(alphaBefore.fingerprint);
    expect((await offeredAndClosed(t.port('submission'), 'implicit')).fingerprint).not.toBe(submitBefore.fingerprint);
    // The connection encrypted before the reload keeps its session and takes a message.
    for (const line of ['MAIL FROM:<a@remote.test>', 'RCPT TO:<postmaster>', 'DATA']) expect(await before.c.command(line)).toMatch(/^[23]/);
    expect(await before.c.finishData('Subject: across a reload\r\n\r\nhello\r\n')).toMatch(/^\w+$/);
    before.c.close();
  });

  it.each([
    ['a certificate file that holds no certificate', 'default.crt', 'garbage\n', /^tls\.cert: .*default\.crt holds no PEM certificate$/],
    ['a key that is not the certificate\'s', 'default.key', null, /^tls\.key: .*default\.key is not the key of the certificate in .*default\.crt/],
    ['an SNI key file that holds no key', 'alpha.key', '-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n', /^tls\.sni\["mail\.alpha\.test"\]\.key: .*alpha\.key holds no PEM private key/],
    ['a listener\'s certificate file that is gone', 'submit.crt', undefined, /^listeners\[1\]\.cert: cannot read .*submit\.crt: ENOENT$/],
  ])('refuses a reload with %s, naming the key, and keeps the pair in force', async (_what, name, content, problem) => {
    const inForce = await offeredAndClosed(t.port('mx'), 'starttls');
    const submitInForce = await offeredAndClosed(t.port('submission'), 'implicit');
    const { readFile, unlink } = await import('node:fs/promises');
    const saved = await readFile(path(name), 'utf8');
    if (content === undefined) await unlink(path(name));
    else await writeFile(path(name), content ?? (await ca.issue(['mx.ichidan.test'])).key);
    const generation = t.app.generation;
    const result = t.app.reload(file);
    expect(result.ok).toBe(false);
    expect(result.ok ? [] : result.problems).toEqual([expect.stringMatching(problem)]);
    expect(t.app.generation).toBe(generation);
    expect(t.logs.some((l) => l.msg === 'reload failed: the running configuration stays')).toBe(true);
    expect((await offeredAndClosed(t.port('mx'), 'starttls')).fingerprint).toBe(inForce.fingerprint);
    expect((await offeredAndClosed(t.port('submission'), 'implicit')).fingerprint).toBe(submitInForce.fingerprint);
    await writeFile(path(name), saved);
    expect(t.app.reload(file).ok).toBe(true);
  });
});

describe('certificates: SIGHUP and `ichidan reload` on a running process', () => {
  let dir: string;
  let child: ChildIchidan | null = null;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'ichidan-certs-'));
  });
  afterAll(async () => {
    if (child) {
      child.proc.kill('SIGTERM');
      await child.exited;
    }
    await rm(dir, { recursive: true, force: true });
  });

  it('takes a renewed certificate on SIGHUP, and `ichidan reload` names the key of a broken one', async () => {
    const ca = await makeTestCa();
    const renew = async () => {
      const pair = await ca.issue(['mx.ichidan.test']);
      await writeFile(join(dir, 'mx.crt'), pair.cert);
      await writeFile(join(dir, 'mx.key'), pair.key);
    };
    await renew();
    const file = join(dir, 'ichidan.yaml');
    await writeFile(file, stringify(baseConfig(join(dir, 'data'), {
      listeners: [{ name: 'mx', role: 'mx', port: 0 }],
      tls: { cert: join(dir, 'mx.crt'), key: join(dir, 'mx.key') },
    })));
    child = await startChild(file);
    const first = await offeredAndClosed(child.ports.mx, 'starttls');
    await renew();
    child.proc.kill('SIGHUP');
    await waitUntil(async () => (await offeredAndClosed(child!.ports.mx, 'starttls')).fingerprint !== first.fingerprint, 10_000, 'the renewed certificate after SIGHUP');
    const renewed = await offeredAndClosed(child.ports.mx, 'starttls');
    await writeFile(join(dir, 'mx.crt'), 'not a certificate\n');
    const failed = await exec(process.execPath, [CLI, 'reload', '-c', file]).catch((e: { code: number; stderr: string; stdout: string }) => e);
    expect((failed as { code: number }).code).not.toBe(0);
    expect(`${(failed as { stderr: string }).stderr}${(failed as { stdout: string }).stdout}`).toMatch(/tls\.cert: .*mx\.crt holds no PEM certificate/);
    expect((await offeredAndClosed(child.ports.mx, 'starttls')).fingerprint).toBe(renewed.fingerprint);
  }, 60_000);

  it('with admin.watchConfig, takes a renewed certificate by itself (certbot swapping the symlinks), the config file unchanged', async () => {
    const live = join(dir, 'live');
    await mkdir(live);
    const ca = await makeTestCa();
    // certbot's layout: live/ holds symlinks to the current files of archive/, replaced at each renewal.
    const renew = async (n: number) => {
      const pair = await ca.issue(['mx.ichidan.test']);
      await writeFile(join(dir, `cert${n}.pem`), pair.cert);
      await writeFile(join(dir, `key${n}.pem`), pair.key);
      for (const what of ['cert', 'key']) {
        await symlink(join(dir, `${what}${n}.pem`), join(live, `${what}.new`));
        await rename(join(live, `${what}.new`), join(live, `${what}.pem`));
      }
    };
    await renew(1);
    const file = join(dir, 'watched.yaml');
    await writeFile(file, stringify(baseConfig(join(dir, 'data-watched'), {
      listeners: [{ name: 'mx', role: 'mx', port: 0 }],
      admin: { watchConfig: true, socket: join(dir, 'watched.sock') },
      tls: { cert: join(live, 'cert.pem'), key: join(live, 'key.pem') },
    })));
    const watched = await startChild(file);
    try {
      const first = await offeredAndClosed(watched.ports.mx, 'starttls');
      await renew(2);
      await waitUntil(async () => (await offeredAndClosed(watched.ports.mx, 'starttls')).fingerprint !== first.fingerprint, 15_000, 'the renewed certificate without a command');
    } finally {
      watched.proc.kill('SIGTERM');
      await watched.exited;
    }
  }, 60_000);
});
