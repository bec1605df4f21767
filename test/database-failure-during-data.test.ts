// A failing queue database during DATA (a real SQLite error from a trigger): 452 4.3.1, and the spool
// file already written is removed; mail is taken again once the database works.
import { describe, expect, it } from 'vitest';
import { startApp } from './helpers/app.js';
import { heldConfig, sendOne, spoolFiles } from './helpers/held-mail.js';

describe('a failing queue database during DATA', () => {
  it('answers 452 4.3.1 and removes the spool file it had written', async () => {
    const t = await startApp(heldConfig);
    try {
      // A real SQLite failure: a trigger that makes every insert fail.
      t.app.queue.store.db.exec(`CREATE TRIGGER fail_insert BEFORE INSERT ON messages BEGIN SELECT RAISE(FAIL, 'injected failure'); END`);
      expect(await sendOne(t.port(), 'lost?')).toMatch(/^452 4\.3\.1 /);
      expect(await spoolFiles(t.dataDir)).toEqual([]);
      t.app.queue.store.db.exec('DROP TRIGGER fail_insert');
      expect(await sendOne(t.port(), 'kept')).toMatch(/^250 2\.0\.0 /);
      expect(await spoolFiles(t.dataDir)).toHaveLength(1);
    } finally {
      await t.stop();
    }
  });
});
