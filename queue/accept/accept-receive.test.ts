import { describe, expect, it } from 'vitest';
import { LineEndingGuard } from './accept-receive.js';

function bare(...chunks: string[]): boolean {
  const g = new LineEndingGuard();
  for (const c of chunks) g.feed(Buffer.from(c, 'latin1'));
  g.finish();
  return g.bare;
}

describe('bare CR / LF detection', () => {
  it.each([
    [['a\r\nb\r\n'], false],
    [['a\r', '\nb\r\n'], false],
    [['a\r\n', 'b\r\n'], false],
    [['\r\n'], false],
    [['a\nb\r\n'], true],
    [['a\rb\r\n'], true],
    [['a\r', 'b\r\n'], true],
    [['\n'], true],
    [['a\r\n', '\nb'], true],
    [['a\r\r\n'], true],
    [['a\r'], true],
    [['x'.repeat(70000) + '\r\n' + 'y\n'], true],
  ])('%j → bare=%s', (chunks, expected) => {
    expect(bare(...chunks)).toBe(expected);
  });
});
