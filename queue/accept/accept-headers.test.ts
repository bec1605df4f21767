// The header fields Ichidan puts in front of a message are always well-formed.
import { describe, expect, it } from 'vitest';
import { headerField } from './accept-headers.js';

describe('headerField', () => {
  it.each([
    ['X-Spam-Status: No, score=0', 'X-Spam-Status: No, score=0\r\n'],
    ['Authentication-Results: mx.test;\r\n spf=pass', 'Authentication-Results: mx.test;\r\n spf=pass\r\n'],
    ['X-A: a\r\nBcc: evil@x.test', 'X-A: a\r\n Bcc: evil@x.test\r\n'],
    ['X-A: a\nB: b', 'X-A: a\r\n B: b\r\n'],
    ['X-A: a\r\n \r\n\r\nbody', 'X-A: a\r\n body\r\n'],
    ['X-A: a\rB\u0000c\u001b[0m', 'X-A: a\r\n B c [0m\r\n'],
  ])('%j', (input, expected) => {
    expect(headerField(input)).toBe(expected);
  });
});
