// The listener greeting delay: a client that talks before the greeting is refused, and the delay is
// honoured (smtp-server patched; the test fails if the patch is lost).
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { baseConfig, startApp } from './helpers/app.js';
import { RawSmtp } from './helpers/raw-smtp.js';

describe('SMTP ingress: greeting delay', () => {
  it('refuses a client that talks before the greeting when a greeting delay is set', async () => {
    const slow = await startApp((dir) => baseConfig(dir, {
      listeners: [{ name: 'mx', role: 'mx', port: 0, greetingDelay: '300ms' }],
      tenants: { alpha: { domains: ['alpha.test'] } },
    }));
    try {
      const early = await RawSmtp.open(slow.port('mx'));
      early.send('EHLO early.test\r\n');
      expect((await early.reply())[0]).toMatch(/^421 .*talk too soon/i);
      early.close();
      const patient = await RawSmtp.open(slow.port('mx'));
      expect((await patient.reply())[0]).toMatch(/^220 /);
      patient.close();
    } finally {
      await slow.stop();
    }
  });

  it('honours the listener greeting delay (smtp-server patched; fails if the patch is lost)', async () => {
    const pkg = JSON.parse(await readFile(join(import.meta.dirname, '..', 'node_modules', 'smtp-server', 'package.json'), 'utf8'));
    expect(pkg.version).toBe('3.21.6');
    const slow = await startApp((dir) => baseConfig(dir, { listeners: [{ name: 'mx', role: 'mx', port: 0, greetingDelay: '1500ms' }] }));
    try {
      const c = await RawSmtp.open(slow.port('mx'));
      // Unpatched, smtp-server greets after its fixed 100 ms whatever the setting.
      expect(await c.drain(600)).toBe('');
      expect((await c.reply(5000))[0]).toMatch(/^220 /);
      c.close();
    } finally {
      await slow.stop();
    }
  });
});
