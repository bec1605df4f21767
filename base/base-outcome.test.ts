// The outcome statuses: each is an RFC 3463 enhanced code whose class says what the queue does with it.
import { describe, expect, it } from 'vitest';
import { deferReply, STATUS } from './base-outcome.js';

describe('the outcome statuses', () => {
  it.each(Object.entries(STATUS))('%s is a well-formed enhanced code', (_name, status) => {
    expect(status).toMatch(/^[45]\.\d{1,3}\.\d{1,3}$/);
  });

  it('keeps the permanent ones permanent and the rest temporary', () => {
    const permanent = Object.entries(STATUS).filter(([, s]) => s.startsWith('5.')).map(([n]) => n).sort();
    expect(permanent).toEqual(['hostWithoutAddress', 'noSuchDomain', 'nullMx', 'otherPermanent', 'tooBigForHop']);
  });

  it('writes a deferral as one 451 reply line', () => {
    expect(deferReply(STATUS.noAnswer, 'mx1.example.net: ECONNREFUSED')).toBe('451 4.4.1 mx1.example.net: ECONNREFUSED');
  });
});
