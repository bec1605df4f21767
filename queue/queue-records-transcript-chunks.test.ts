import { deflateRawSync } from 'node:zlib';
import { describe, expect, it } from 'vitest';
import type { TranscriptLine } from '../delivery/index.js';
import { decodeChunk, encodeChunk, serializeLines } from './queue-records-transcript-chunks.js';

const T0 = 1_800_000_000_000;
const Q = 'Bq7fK2mX9pL4sT';

/** One message's lines as a session to a Postfix MX hands them over: a typical chunk. */
const message: TranscriptLine[] = [
  ['client', 'MAIL FROM:<news@shop.example> SIZE=2311 BODY=8BITMIME'],
  ['client', 'RCPT TO:<kim@mail.example.net>'],
  ['client', 'DATA'],
  ['server', '250 2.1.0 Ok'],
  ['server', '250 2.1.5 Ok'],
  ['server', '354 End data with <CR><LF>.<CR><LF>'],
  ['client', '<2311 bytes>'],
  ['server', '250 2.0.0 Ok: queued as 4Zk9Qw1xYz'],
].map(([dir, text], i) => ({ seq: 9 + i, at: T0 + i * 3, dir: dir as 'client' | 'server', queueId: Q, text }));

const stored = (lines: TranscriptLine[]) => {
  const c = encodeChunk(lines);
  return { first_seq: c.firstSeq, last_seq: c.lastSeq, at: c.at, data: c.data };
};

describe('transcript chunks', () => {
  it('gives back the lines it was given: seq, time, direction, queue id and text', () => {
    const lines: TranscriptLine[] = [
      { seq: 1, at: T0, dir: 'server', queueId: null, text: '220 mx.example.net ESMTP' },
      { seq: 2, at: T0 + 40, dir: 'client', queueId: null, text: 'EHLO out.example' },
      { seq: 3, at: T0 + 41, dir: 'server', queueId: null, text: '250-mx.example.net\n250-PIPELINING\n250 SMTPUTF8' },
      { seq: 4, at: T0 + 41, dir: 'client', queueId: 'A1', text: 'MAIL FROM:<jürgen@例え.jp> SMTPUTF8' },
      { seq: 5, at: T0 + 90, dir: 'server', queueId: 'A1', text: '250 2.1.0 "quoted"\ttab \\ back' },
      { seq: 6, at: T0 + 95, dir: 'client', queueId: 'B2', text: '' },
    ];
    const row = stored(lines);
    expect(row).toMatchObject({ first_seq: 1, last_seq: 6, at: T0 });
    expect(decodeChunk(row)).toEqual(lines);
    expect(decodeChunk(stored(message))).toEqual(message);
  });

  it('is smaller for a typical message with its preset dictionary than without', () => {
    const withDictionary = encodeChunk(message).data.length;
    const without = deflateRawSync(serializeLines(message)).length;
    const plain = Buffer.byteLength(message.map((l) => l.text).join(''));
    expect(withDictionary).toBeLessThan(without);
    expect(withDictionary).toBeLessThan(plain * 0.6);
  });

  it('refuses a damaged blob instead of giving wrong lines', () => {
    const row = stored(message);
    expect(() => decodeChunk({ ...row, data: Buffer.from('not deflate at all, just bytes') })).toThrow();
    expect(() => decodeChunk({ ...row, data: row.data.subarray(0, row.data.length - 6) })).toThrow();
    expect(() => decodeChunk({ ...row, last_seq: row.last_seq + 1 })).toThrow(/row says/);
    expect(() => decodeChunk({ ...row, data: deflateRawSync('{"a":1}') })).toThrow();
  });
});
