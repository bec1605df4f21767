/*
 * How one transcript chunk's lines are kept on the disk: as one row of `transcript_chunks`, its
 * lines serialized together and compressed, instead of one row per line. A message's dozen short
 * lines then fill a few hundred bytes of one page instead of a row (and its index entry) each.
 *
 * The blob: deflateRaw (node:zlib) of a JSON array `[queueIds, lines]`, each line
 * `[seq - previous seq, at - previous at, 0 client | 1 server, 0 none | i for queueIds[i - 1], text]`,
 * "previous" being the row's `first_seq` and `at` for the first line. A chunk holds one message's
 * dozen lines, too few for deflate to find repeats of its own, so it starts from a preset
 * dictionary: a typical session serialized the same way, so that EHLO's keywords, the usual
 * replies and the JSON between them are matches from the first line on. The dictionary is part of
 * the format: changing it makes every stored blob unreadable.
 * A blob that cannot be read (inflated, parsed, or does not fit its row's seq range) is an error
 * the reader reports as a gap; it never stops the other rows from being read.
 */
import { deflateRawSync, inflateRawSync } from 'node:zlib';
import type { TranscriptLine } from '../delivery/index.js';

export interface EncodedChunk {
  firstSeq: number;
  lastSeq: number;
  /** The first line's time. */
  at: number;
  data: Buffer;
}

type StoredLine = [seqStep: number, atStep: number, dir: 0 | 1, queue: number, text: string];

/** The blob before compression: the lines (at least one) as JSON, each relative to the one before. */
export function serializeLines(lines: readonly TranscriptLine[]): string {
  const queueIds: string[] = [];
  let seq = lines[0].seq;
  let last = lines[0].at;
  const stored = lines.map((l): StoredLine => {
    if (l.queueId !== null && !queueIds.includes(l.queueId)) queueIds.push(l.queueId);
    const line: StoredLine = [l.seq - seq, l.at - last, l.dir === 'client' ? 0 : 1, l.queueId === null ? 0 : queueIds.indexOf(l.queueId) + 1, l.text];
    seq = l.seq;
    last = l.at;
    return line;
  });
  return JSON.stringify([queueIds, stored]);
}

/**
 * A session as most look: the handshake (greeting, EHLO, STARTTLS), common refusals, then one
 * message and its replies, the most frequent last. A line each: its direction (C or S), whether it
 * belongs to the message (M) or not (-), and its text ("\n" between the lines of a reply).
 */
const SAMPLE = String.raw`
S - 220 mx.example.com ESMTP Postfix
C - EHLO mail.example.org
S - 250-mx.example.com\n250-PIPELINING\n250-SIZE 52428800\n250-VRFY\n250-ETRN\n250-STARTTLS\n250-AUTH PLAIN LOGIN\n250-ENHANCEDSTATUSCODES\n250-8BITMIME\n250-DSN\n250-SMTPUTF8\n250-CHUNKING\n250 SMTPUTF8
C - STARTTLS
S - 220 2.0.0 Ready to start TLS
C - QUIT
S - 221 2.0.0 Bye
C - RSET
S - 250 2.0.0 Ok
S - 421 4.7.0 Try again later
S - 450 4.2.0 <user@example.com>: Recipient address rejected: Greylisted
S - 550 5.1.1 <user@example.com>: Recipient address rejected: User unknown in virtual mailbox table
S - 452 4.5.3 Error: too many recipients
S - 250 2.6.0 Message accepted
S - 250 OK id=1abcde-000000-AB
C M MAIL FROM:<bounces+user=example.com@mail.example.org> SIZE=2048 BODY=8BITMIME RET=HDRS ENVID=Ab3dE5gH7jK9mN
C M RCPT TO:<user@example.com> NOTIFY=FAILURE,DELAY ORCPT=rfc822;user@example.com
C M MAIL FROM:<newsletter@mail.example.org> SIZE=2048
C M RCPT TO:<user@example.com>
C M DATA
S M 250 2.1.0 Sender OK
S M 250 2.1.5 Recipient OK
S M 354 End data with <CR><LF>.<CR><LF>
C M <2048 bytes>
S M 250 2.0.0 Ok: queued as 4XyZ1a2B3c
S M 250 2.1.0 Ok
S M 250 2.1.5 Ok`;

const DICTIONARY = Buffer.from(serializeLines(SAMPLE.trim().split('\n').map((line, i): TranscriptLine => ({
  seq: i + 1, at: 1_765_000_000_000 + i * 7, dir: line[0] === 'C' ? 'client' : 'server', queueId: line[2] === 'M' ? 'Ab3dE5gH7jK9mN' : null,
  text: line.slice(4).replaceAll('\\n', '\n'),
}))));

/**
 * The output buffer zlib allocates per call (16 KB by default): a chunk compresses to a few hundred
 * bytes, and 16 KB a chunk cost the writer thread about 20 µs a message more in allocation and
 * collection (bench-transcripts.ts).
 */
const OUTPUT_BUFFER = 1024;

/** One chunk's lines (at least one, in order) as a row: their seq range, the first one's time, the compressed blob. */
export function encodeChunk(lines: readonly TranscriptLine[]): EncodedChunk {
  const data = deflateRawSync(serializeLines(lines), { dictionary: DICTIONARY, chunkSize: OUTPUT_BUFFER });
  return { firstSeq: lines[0].seq, lastSeq: lines[lines.length - 1].seq, at: lines[0].at, data };
}

/** The lines of a stored chunk; throws when its blob is damaged or does not fit its row. */
export function decodeChunk(row: { first_seq: number; last_seq: number; at: number; data: Buffer }): TranscriptLine[] {
  const parsed: unknown = JSON.parse(inflateRawSync(row.data, { dictionary: DICTIONARY }).toString('utf8'));
  if (!Array.isArray(parsed) || parsed.length !== 2 || !Array.isArray(parsed[0]) || !Array.isArray(parsed[1])) throw new Error('not a transcript chunk');
  const [queueIds, stored] = parsed as [unknown[], unknown[]];
  let seq = row.first_seq;
  let at = row.at;
  const lines = stored.map((item): TranscriptLine => {
    if (!isStoredLine(item) || item[3] > queueIds.length || (item[3] > 0 && typeof queueIds[item[3] - 1] !== 'string')) throw new Error('not a transcript line');
    seq += item[0];
    at += item[1];
    return { seq, at, dir: item[2] === 0 ? 'client' : 'server', queueId: item[3] === 0 ? null : queueIds[item[3] - 1] as string, text: item[4] };
  });
  if (lines.length === 0 || seq !== row.last_seq) throw new Error(`lines end at ${seq}, the row says ${row.last_seq}`);
  return lines;
}

function isStoredLine(item: unknown): item is StoredLine {
  return Array.isArray(item) && item.length === 5 && Number.isSafeInteger(item[0]) && item[0] >= 0 && Number.isSafeInteger(item[1]) && item[1] >= 0
    && (item[2] === 0 || item[2] === 1) && Number.isSafeInteger(item[3]) && item[3] >= 0 && typeof item[4] === 'string';
}
