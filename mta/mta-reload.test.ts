import { describe, expect, it } from 'vitest';
import { parseConfig } from './mta-config.js';
import { needsRestart, RESTART_ONLY } from './mta-reload.js';

describe('needsRestart', () => {
  const base = parseConfig({});

  it('names nothing when only settings a reload applies changed', () => {
    const after = parseConfig({ log: { level: 'debug' }, limits: { maxRecipients: 7 } });
    expect(needsRestart(base, after)).toEqual([]);
  });

  it('names each restart-only key that changed, by its documented name', () => {
    const after = parseConfig({ queue: { fsync: false }, auth: { workers: 2 }, admin: { watchConfig: true } });
    expect(needsRestart(base, after)).toEqual(['admin', 'queue.fsync', 'auth.workers']);
  });

  it('reads every key it names', () => {
    for (const read of Object.values(RESTART_ONLY)) expect(() => read(base)).not.toThrow();
  });
});
