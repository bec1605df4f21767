// The reply catalogue: every entry is a well-formed SMTP reply whose enhanced code agrees with its code.
import { describe, expect, it } from 'vitest';
import { contentRefused, destinationIsSelf, heldInQuarantine, notFullyScanned, proxyNotAllowed, queued, REPLIES, replyText, structureRefused, toSmtpError, virusFound, type SmtpReply } from './base-reply.js';

const entries: Array<[string, SmtpReply]> = [
  ...Object.entries(REPLIES),
  ['queued', queued('0123456789AB')],
  ['heldInQuarantine', heldInQuarantine('0123456789AB')],
  ['structureRefused', structureRefused('MIME nesting deeper than 16 levels')],
  ['notFullyScanned', notFullyScanned('encrypted archive')],
  ['virusFound', virusFound('Eicar-Signature')],
  ['contentRefused', contentRefused('executable attachment')],
  ['proxyNotAllowed', proxyNotAllowed('192.0.2.7')],
  ['destinationIsSelf', destinationIsSelf('127.0.0.1:25')],
];

describe('the reply catalogue', () => {
  it.each(entries)('%s', (_name, r) => {
    expect(r.code).toBeGreaterThanOrEqual(200);
    expect(r.code).toBeLessThan(600);
    // RFC 3463: the class of the enhanced code is the first digit of the reply code.
    expect(r.enhanced).toMatch(/^[245]\.\d{1,3}\.\d{1,3}$/);
    expect(r.enhanced[0]).toBe(String(r.code)[0]);
    expect(r.text).not.toMatch(/[\r\n]/);
    expect(r.text.length).toBeGreaterThan(0);
  });

  it('gives smtp-server an error carrying the code, and a success its text after the code', () => {
    const err = toSmtpError(REPLIES.tooBig);
    expect(err.responseCode).toBe(552);
    expect(err.message).toBe('5.3.4 message too big: it exceeds the maximum message size');
    expect(replyText(queued('X'))).toBe('2.0.0 Ok: queued as X');
  });
});
