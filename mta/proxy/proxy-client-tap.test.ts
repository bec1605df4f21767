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

describe('ClientTaps: the chunk smtp-server\'s parser works on', () => {
  /** A parser that notes the chunks it is given, as smtp-server's SMTPStream takes them from the socket. */
  function parser() {
    const seen: Buffer[] = [];
    return { seen, _write(chunk: Buffer, _encoding: string, done: () => void) { seen.push(chunk); done(); } };
  }
  const b = (s: string) => Buffer.from(s, 'latin1');

  it('reads what follows a command off the chunk the parser took last, not the socket\'s newest', () => {
    const taps = new ClientTaps();
    const first = parser();
    const made: Array<ReturnType<typeof parser>> = [];
    const connection = { _parser: first as ReturnType<typeof parser> | false, _createParser: () => { const p = parser(); made.push(p); return p; } };
    const socket = Object.assign(new EventEmitter(), { destroyed: false, cork() {}, uncork() {} });
    taps.watch('c|1', socket as unknown as Socket, connection);
    first._write(b('RCPT TO:<x@d.test>\r\nRCPT TO:<y@d.test>\r\n'), 'buffer', () => undefined);
    // A later chunk the socket has read while a command waits: not the parser's yet.
    socket.emit('data', b('RCPT TO:<x@d.test>\r\nRCPT TO:<q@d.test>\r\nDATA\r\n'));
    expect(first.seen).toHaveLength(1);
    expect(taps.rcptsAfter('c|1', b('RCPT TO:<x@d.test>')).lines.map((l) => l.toString())).toEqual(['RCPT TO:<y@d.test>']);
    // Once the parser takes it, that chunk is the one.
    first._write(b('RCPT TO:<x@d.test>\r\nRCPT TO:<q@d.test>\r\nDATA\r\n'), 'buffer', () => undefined);
    expect(taps.rcptsAfter('c|1', b('RCPT TO:<x@d.test>'))).toMatchObject({ data: true });
    expect(taps.dataFollows('c|1', b('RCPT TO:<q@d.test>'))).toBe(true);
    // After STARTTLS smtp-server reads with a parser it makes anew: followed as well, nothing carried over.
    taps.secured('c|1', socket as unknown as Socket);
    expect(taps.rcptsAfter('c|1', b('RCPT TO:<x@d.test>')).lines).toEqual([]);
    const next = (connection as { _createParser(): ReturnType<typeof parser> })._createParser();
    next._write(b('MAIL FROM:<a@x.test>\r\n'), 'buffer', () => undefined);
    expect(made).toEqual([next]);
    expect(taps.endsWith('c|1', b('MAIL FROM:<a@x.test>'))).toBe(true);
  });
});

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
    taps.watch('c|1', s as unknown as Socket, { _parser: false, _createParser: () => ({ _write: () => undefined }) });
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
