// Whether DATA came right after a RCPT, read off the end of the chunk it came in (proxy-client-tap.ts).
import { describe, expect, it } from 'vitest';
import { dataFollows } from './proxy-client-tap.js';

const b = (s: string) => Buffer.from(s, 'latin1');

describe('dataFollows: did the client send DATA right after this command line?', () => {
  it.each([
    ['MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nDATA\r\n', 'RCPT TO:<b@y>', true],
    ['RCPT TO:<b@y>\r\ndata\r\n', 'RCPT TO:<b@y>', true],
    ['RCPT TO:<b@y>\nDATA\n', 'RCPT TO:<b@y>', true],
    // another RCPT comes between, or DATA is not the chunk's last line
    ['RCPT TO:<b@y>\r\nRCPT TO:<c@y>\r\nDATA\r\n', 'RCPT TO:<b@y>', false],
    ['RCPT TO:<b@y>\r\nDATA\r\nNOOP\r\n', 'RCPT TO:<b@y>', false],
    ['RCPT TO:<b@y>\r\n', 'RCPT TO:<b@y>', false],
    // a line that only ends like this one
    ['NOOP RCPT TO:<b@y>\r\nDATA\r\n', 'RCPT TO:<b@y>', false],
    ['NOOP\r\nRCPT TO:<b@y>\r\nDATA\r\n', 'RCPT TO:<b@y>', true],
    ['RCPT TO:<b@y>\r\nDATAX\r\n', 'RCPT TO:<b@y>', false],
  ])('%j after %j → %s', (chunk, raw, expected) => {
    expect(dataFollows(b(chunk), b(raw))).toBe(expected);
  });

  it('says no without a chunk or a command line', () => {
    expect(dataFollows(null, b('RCPT TO:<b@y>'))).toBe(false);
    expect(dataFollows(b('RCPT TO:<b@y>\r\nDATA\r\n'), undefined)).toBe(false);
  });
});
