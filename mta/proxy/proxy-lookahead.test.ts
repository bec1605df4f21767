import { describe, expect, it } from 'vitest';
import { handedOver, MOST_AHEAD, rcptLinesAfter } from './proxy-lookahead.js';

const b = (s: string) => Buffer.from(s, 'latin1');
const text = (r: { lines: Buffer[]; data: boolean }) => ({ lines: r.lines.map((l) => l.toString('latin1')), data: r.data });

describe('the RCPT lines after the one handed over', () => {
  it('gives the whole RCPT lines that follow it, and whether DATA ended the chunk right after them', () => {
    const chunk = b('MAIL FROM:<a@x.test>\r\nRCPT TO:<1@d.test>\r\nRCPT TO:<2@d.test> NOTIFY=NEVER\r\nrcpt to:<3@d.test>\r\nDATA\r\n');
    expect(text(rcptLinesAfter(chunk, b('RCPT TO:<1@d.test>')))).toEqual({ lines: ['RCPT TO:<2@d.test> NOTIFY=NEVER', 'rcpt to:<3@d.test>'], data: true });
    expect(text(rcptLinesAfter(chunk, b('RCPT TO:<2@d.test> NOTIFY=NEVER')))).toEqual({ lines: ['rcpt to:<3@d.test>'], data: true });
    // The last one: nothing follows but DATA, which the group's own check sees.
    expect(text(rcptLinesAfter(chunk, b('rcpt to:<3@d.test>')))).toEqual({ lines: [], data: false });
  });

  it('takes bare LF line ends as smtp-server does', () => {
    expect(text(rcptLinesAfter(b('RCPT TO:<1@d.test>\nRCPT TO:<2@d.test>\nDATA\n'), b('RCPT TO:<1@d.test>')))).toEqual({ lines: ['RCPT TO:<2@d.test>'], data: true });
  });

  it('stops at the first line that is not a RCPT, and at a line not yet whole', () => {
    const chunk = b('RCPT TO:<1@d.test>\r\nRCPT TO:<2@d.test>\r\nNOOP\r\nRCPT TO:<3@d.test>\r\n');
    expect(text(rcptLinesAfter(chunk, b('RCPT TO:<1@d.test>')))).toEqual({ lines: ['RCPT TO:<2@d.test>'], data: false });
    expect(text(rcptLinesAfter(b('RCPT TO:<1@d.test>\r\nRCPT TO:<2@d.test>\r\nRCPT TO:<3@d'), b('RCPT TO:<1@d.test>')))).toEqual({ lines: ['RCPT TO:<2@d.test>'], data: false });
  });

  it('says DATA followed only when it ends the chunk (nothing may follow DATA in a group)', () => {
    expect(text(rcptLinesAfter(b('RCPT TO:<1@d.test>\r\nRCPT TO:<2@d.test>\r\nDATA\r\nSubject: x\r\n'), b('RCPT TO:<1@d.test>')))).toEqual({ lines: ['RCPT TO:<2@d.test>'], data: false });
    expect(text(rcptLinesAfter(b('RCPT TO:<1@d.test>\r\nRCPT TO:<2@d.test>\r\nDATAX\r\n'), b('RCPT TO:<1@d.test>')))).toEqual({ lines: ['RCPT TO:<2@d.test>'], data: false });
  });

  it('gives nothing when the line is not in the chunk whole, or is there twice', () => {
    expect(text(rcptLinesAfter(b('RCPT TO:<1@d.test>\r\nRCPT TO:<2@d.test>\r\n'), b('RCPT TO:<9@d.test>')))).toEqual({ lines: [], data: false });
    // Only the end of a longer line.
    expect(text(rcptLinesAfter(b('XRCPT TO:<1@d.test>\r\nRCPT TO:<2@d.test>\r\n'), b('RCPT TO:<1@d.test>')))).toEqual({ lines: [], data: false });
    // Only the start of a longer line.
    expect(text(rcptLinesAfter(b('RCPT TO:<1@d.test> X\r\nRCPT TO:<2@d.test>\r\n'), b('RCPT TO:<1@d.test>')))).toEqual({ lines: [], data: false });
    const twice = b('RCPT TO:<1@d.test>\r\nRCPT TO:<2@d.test>\r\nRCPT TO:<1@d.test>\r\nRCPT TO:<3@d.test>\r\n');
    expect(text(rcptLinesAfter(twice, b('RCPT TO:<1@d.test>')))).toEqual({ lines: [], data: false });
    expect(text(rcptLinesAfter(null, b('RCPT TO:<1@d.test>')))).toEqual({ lines: [], data: false });
    expect(text(rcptLinesAfter(twice, undefined))).toEqual({ lines: [], data: false });
  });

  it('takes at most MOST_AHEAD lines', () => {
    const lines = Array.from({ length: MOST_AHEAD + 10 }, (_, i) => `RCPT TO:<${i}@d.test>`);
    const got = rcptLinesAfter(b(`${lines.join('\r\n')}\r\nDATA\r\n`), b(lines[0]));
    expect(got.lines).toHaveLength(MOST_AHEAD);
    expect(got.data).toBe(false);
  });
});

describe('which RCPTs smtp-server surely hands over', () => {
  it('takes an address without parameters, or with valid DSN parameters', () => {
    expect(handedOver({ address: 'a@d.test', args: false })).toBe(true);
    expect(handedOver({ address: 'a@d.test', args: { NOTIFY: 'SUCCESS,FAILURE', ORCPT: 'rfc822;a@d.test' } })).toBe(true);
    expect(handedOver({ address: 'a@d.test', args: { NOTIFY: 'never' } })).toBe(true);
  });

  it('leaves what smtp-server refuses itself, and parameters it does not check', () => {
    expect(handedOver(false)).toBe(false);
    expect(handedOver({ address: '', args: false })).toBe(false);
    expect(handedOver({ address: 'a@d.test', args: { NOTIFY: 'SUCCESS' }, duplicate: 'NOTIFY' })).toBe(false);
    expect(handedOver({ address: 'a@d.test', args: { NOTIFY: true } })).toBe(false);
    expect(handedOver({ address: 'a@d.test', args: { NOTIFY: '' } })).toBe(false);
    expect(handedOver({ address: 'a@d.test', args: { NOTIFY: 'SOMETIMES' } })).toBe(false);
    expect(handedOver({ address: 'a@d.test', args: { NOTIFY: 'NEVER,SUCCESS' } })).toBe(false);
    expect(handedOver({ address: 'a@d.test', args: { ORCPT: 'a@d.test' } })).toBe(false);
    expect(handedOver({ address: 'a@d.test', args: { XFOO: 'bar' } })).toBe(false);
  });
});
