import { describe, expect, it } from 'vitest';
import { engineSchema, oversizeWarnings } from './engines-config.js';

describe('oversize', () => {
  it('defaults to unscannable for the safety checks (AV, attachment policy) and to skip for spam scoring and sender authentication', () => {
    const oversize = (type: string) => engineSchema.parse({ name: 'e', type, ...(type === 'icap' ? { server: {}, service: 'avscan' } : {}) }).oversize;
    expect(['clamd', 'icap', 'policy'].map(oversize)).toEqual(['unscannable', 'unscannable', 'unscannable']);
    expect(['spamd', 'rspamd', 'mailauth'].map(oversize)).toEqual(['skip', 'skip', 'skip']);
  });

  it('warns about every engine below limits.maxMessageSize that refuses or stops checking larger mail, naming the keys', () => {
    const engines = [
      { name: 'clamav', type: 'clamd', maxSize: '10MB' },
      { name: 'sa', type: 'spamd' },
      { name: 'attachments', type: 'policy', maxSize: '10MB', oversize: 'skip' },
      { name: 'icap', type: 'icap', server: {}, service: 'avscan', maxSize: '50MB' },
      { name: 'rspamd', type: 'rspamd', maxSize: '1MB', oversize: 'unscannable' },
    ].map((e) => engineSchema.parse(e));
    expect(oversizeWarnings(engines, 25 * 1024 * 1024)).toEqual([
      'engines[0].maxSize (10485760 bytes) is below limits.maxMessageSize (26214400 bytes): larger messages are judged not fully scanned by "clamav" (scanning.unscannable); raise engines[0].maxSize or lower limits.maxMessageSize',
      'engines[2].maxSize (10485760 bytes) is below limits.maxMessageSize (26214400 bytes): larger messages are not checked by "attachments" at all (engines[2].oversize: skip)',
      'engines[4].maxSize (1048576 bytes) is below limits.maxMessageSize (26214400 bytes): larger messages are judged not fully scanned by "rspamd" (scanning.unscannable); raise engines[4].maxSize or lower limits.maxMessageSize',
    ]);
    expect(oversizeWarnings(engines, 1024 * 1024)).toEqual([]);
  });
});
