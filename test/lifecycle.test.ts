// Timeouts and graceful shutdown.
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { baseConfig, startApp } from './helpers/app.js';
import { startChild } from './helpers/child.js';
import { RawSmtp } from './helpers/raw-smtp.js';
import { startSink } from './helpers/sink.js';

describe('timeouts', () => {
  it('ends a DATA phase that runs past limits.dataTimeout with 421 and keeps nothing', async () => {
    const t = await startApp((dir) => baseConfig(dir, { limits: { dataTimeout: '400ms' }, tenants: { alpha: { domains: ['alpha.test'] } } }));
    try {
      const c = await RawSmtp.atData(t.port(), 'x@remote.test', ['ann@alpha.test']);
      c.send('Subject: slow\r\n\r\nand then nothing more');
      expect((await c.reply(5000))[0]).toMatch(/^421 4\.4\.2 timeout while receiving message data/);
      await new Promise((r) => setTimeout(r, 200));
      expect(c.closed).toBe(true);
      expect(t.app.queue.store.allMessages()).toEqual([]);
    } finally {
      await t.stop();
    }
  });

  it('closes an idle session after limits.commandTimeout', async () => {
    const t = await startApp((dir) => baseConfig(dir, { limits: { commandTimeout: '300ms' } }));
    try {
      const c = await RawSmtp.open(t.port());
      await c.reply();
      expect((await c.reply(5000))[0]).toMatch(/^421 /);
    } finally {
      await t.stop();
    }
  });
});

describe('graceful shutdown', () => {
  it('on SIGTERM stops accepting, finishes the open transaction with 250, then exits 0', async () => {
    const sink = await startSink({ host: '127.0.0.2' });
    const dir = await mkdtemp(join(tmpdir(), 'ichidan-stop-'));
    const configFile = join(dir, 'config.yaml');
    await writeFile(configFile, `dataDir: ${dir}\nlog: { level: warn }\nlisteners: [{ name: mx, role: mx, port: 0 }]\ntrustedNetworks: [127.0.0.1/32]\nroutes: { "*": { host: 127.0.0.2, port: ${sink.port} } }\n`);
    try {
      const child = await startChild(configFile);
      const c = await RawSmtp.open(child.ports.mx);
      await c.reply();
      await c.command('EHLO client.test');
      await c.command('MAIL FROM:<x@remote.test>');
      await c.command('RCPT TO:<late@far.test>');
      expect(await c.command('DATA')).toMatch(/^354/);
      c.send('Subject: in flight\r\n\r\nfirst half\r\n');
      child.proc.kill('SIGTERM');
      await new Promise((r) => setTimeout(r, 300));
      // New connections are refused while the open one is still served.
      await expect(RawSmtp.open(child.ports.mx)).rejects.toThrow(/ECONNREFUSED/);
      c.send('second half\r\n.\r\n');
      expect((await c.reply())[0]).toMatch(/^250 2\.0\.0 Ok: queued as /);
      c.send('QUIT\r\n');
      expect(await child.exited).toBe(0);
      // The accepted message is still there for the next start to deliver.
      const again = await startChild(configFile);
      const [m] = await sink.waitFor(1);
      expect(m.data.toString()).toContain('first half\r\nsecond half\r\n');
      again.proc.kill('SIGTERM');
      await again.exited;
    } finally {
      await sink.close();
      await rm(dir, { recursive: true, force: true });
    }
  });
});
