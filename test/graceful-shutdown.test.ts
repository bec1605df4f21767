// Graceful shutdown of the real process: on SIGTERM it stops accepting, finishes the open
// transaction with 250 and exits 0; the next start delivers what it accepted.
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { startChild } from './helpers/child.js';
import { RawSmtp } from './helpers/raw-smtp.js';
import { startSink } from './helpers/sink.js';

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
