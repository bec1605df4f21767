import { Readable } from 'node:stream';
import { buffer } from 'node:stream/consumers';
import { describe, expect, it } from 'vitest';
import { HeaderStrip, parseStripRule, stripHeaderSection, stripRuleText } from './queue-headers.js';

const rule = parseStripRule('X-Spam-Status,x-spam-flag,x-ichidan-*,authentication-results=mx.ichidan.test')!;

describe('stripping header fields at delivery', () => {
  it.each([
    ['From: a@x.test\r\nX-Spam-Status: No\r\nSubject: hi', 'From: a@x.test\r\nSubject: hi'],
    ['X-SPAM-FLAG: NO\r\nX-Ichidan-Unscanned: x\r\nSubject: hi', 'Subject: hi'],
    ['Subject: hi\r\nX-Spam-Status: No,\r\n\tscore=-5\r\nTo: b@y.test', 'Subject: hi\r\nTo: b@y.test'],
    ['Authentication-Results: mx.ichidan.test; dmarc=pass\r\nAuthentication-Results: mx.other.test; spf=pass\r\nSubject: hi',
      'Authentication-Results: mx.other.test; spf=pass\r\nSubject: hi'],
    ['Authentication-Results: (forged) MX.Ichidan.Test;\r\n dkim=pass\r\nSubject: hi', 'Subject: hi'],
    ['X-Spam-Statuses: kept\r\nSubject: hi', 'X-Spam-Statuses: kept\r\nSubject: hi'],
  ])('%j', (head, expected) => {
    expect(stripHeaderSection(head, rule)).toBe(expected);
  });

  it('streams: the body is untouched, whatever the chunking', async () => {
    const msg = 'From: a@x.test\r\nX-Spam-Flag: YES\r\nSubject: hi\r\n\r\nX-Spam-Flag: in the body stays\r\n';
    for (const size of [1, 3, 7, 64, 1000]) {
      const chunks = [];
      for (let i = 0; i < msg.length; i += size) chunks.push(Buffer.from(msg.slice(i, i + size)));
      const out = await buffer(Readable.from(chunks).pipe(new HeaderStrip(rule)));
      expect(out.toString()).toBe('From: a@x.test\r\nSubject: hi\r\n\r\nX-Spam-Flag: in the body stays\r\n');
    }
  });

  it('tags the Subject once when the rule asks for it', () => {
    const tagging = parseStripRule(stripRuleText(['x-spam-flag'], '[SPAM]'))!;
    expect(stripHeaderSection('From: a@x.test\r\nSubject: Cheap watches\r\nX-Spam-Flag: NO', tagging)).toBe('From: a@x.test\r\nSubject: [SPAM] Cheap watches');
    expect(stripHeaderSection('subject:[SPAM] again', tagging)).toBe('subject:[SPAM] again');
    expect(stripHeaderSection('Subject: folded\r\n long one', tagging)).toBe('Subject: [SPAM] folded\r\n long one');
    expect(stripHeaderSection('Subject:', tagging)).toBe('Subject: [SPAM]');
  });

  it('handles a message that is only a header section', async () => {
    const out = await buffer(Readable.from([Buffer.from('Subject: hi\r\nX-Spam-Flag: YES\r\n')]).pipe(new HeaderStrip(rule)));
    expect(out.toString()).toBe('Subject: hi\r\n');
  });
});
