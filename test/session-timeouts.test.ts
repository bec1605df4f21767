// Session timeouts: a DATA phase past limits.dataTimeout ends with 421 and keeps nothing; an idle
// session is closed after limits.commandTimeout.
import { describe, expect, it } from 'vitest';
import { baseConfig, startApp } from './helpers/app.js';
import { RawSmtp } from './helpers/raw-smtp.js';

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
