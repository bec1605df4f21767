// Whether DATA came right after a RCPT, and whether a MAIL was the last thing sent, read off the end of
// the chunk it came in (proxy-client-tap.ts).
import { EventEmitter } from 'node:events';
import type { Socket } from 'node:net';
import { describe, expect, it } from 'vitest';
import { ClientTaps, dataFollows, endsWithCommand } from './proxy-client-tap.js';

const b = (s: string) => Buffer.from(s, 'latin1');

type Check = (chunk: Buffer | null, raw: Buffer | undefined) => boolean;

/** A table of (chunk, command line, answer), and the answer without a chunk or a command line: no. */
function table(name: string, check: Check, rows: Array<[string, string, boolean]>): void {
  describe(name, () => {
    it.each(rows)('%j, %j → %s', (chunk, raw, expected) => {
      expect(check(b(chunk), b(raw))).toBe(expected);
    });

    it('says no without a chunk or a command line', () => {
      const [chunk, raw] = rows[0];
      expect(check(null, b(raw))).toBe(false);
      expect(check(b(chunk), undefined)).toBe(false);
    });
  });
}

table('dataFollows: did the client send DATA right after this command line?', dataFollows, [
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
]);

table('endsWithCommand: did the client send nothing after this command line?', endsWithCommand, [
  ['MAIL FROM:<a@x>\r\n', 'MAIL FROM:<a@x>', true],
  ['MAIL FROM:<a@x>\n', 'MAIL FROM:<a@x>', true],
  ['RSET\r\nMAIL FROM:<a@x> SIZE=10\r\n', 'MAIL FROM:<a@x> SIZE=10', true],
  // pipelined: more came after it
  ['MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\n', 'MAIL FROM:<a@x>', false],
  ['MAIL FROM:<a@x>\r\nRCPT', 'MAIL FROM:<a@x>', false],
  // a line that only ends like this one, or no line end yet
  ['XMAIL FROM:<a@x>\r\n', 'MAIL FROM:<a@x>', false],
  ['MAIL FROM:<a@x>', 'MAIL FROM:<a@x>', false],
  ['\r\n', 'MAIL FROM:<a@x>', false],
]);

describe('ClientTaps: the replies held back while commands wait', () => {
  /** A socket that counts its corks and uncorks. */
  function socket() {
    const s = Object.assign(new EventEmitter(), { destroyed: false, corks: 0, uncorks: 0, cork() { s.corks++; }, uncork() { s.uncorks++; } });
    return s;
  }
  const tick = () => new Promise<void>((r) => process.nextTick(r));

  it('lets them go once no command waits, as soon as the callbacks under way are done, before the event loop\'s next turn', async () => {
    const taps = new ClientTaps();
    const s = socket();
    taps.watch('c|1', s as unknown as Socket);
    taps.hold('c|1');
    taps.hold('c|1');
    expect(s.corks).toBe(1);
    taps.release('c|1');
    await tick();
    // One command still waits: what was said so far stays held.
    expect(s.uncorks).toBe(0);
    taps.release('c|1');
    // Said in the same callbacks (the next pipelined command's reply, DATA's 354): still held with the rest.
    expect(s.uncorks).toBe(0);
    let turned = false;
    setImmediate(() => { turned = true; });
    await tick();
    expect(s.uncorks).toBe(1);
    expect(turned).toBe(false);
  });
});
