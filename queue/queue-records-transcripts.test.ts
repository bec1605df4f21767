import Database from 'better-sqlite3';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { TranscriptChunk, TranscriptLine } from '../delivery/index.js';
import { mergeChunks, readConnection } from './queue-records-transcripts.js';
import { createWriter, migrate, SCHEMA, type WriteOp } from './queue-store-sql.js';

const T0 = 1_800_000_000_000;

let db: Database.Database;
let write: (op: WriteOp) => unknown;

beforeEach(() => {
  db = new Database(':memory:');
  db.exec(SCHEMA);
  migrate(db);
  write = createWriter(db);
});
afterEach(() => db.close());

const line = (seq: number, dir: 'client' | 'server', text: string, queueId: string | null = null): TranscriptLine => ({ seq, at: T0 + seq * 10, dir, queueId, text });

/** A session of two messages, as its three chunks: the handshake with the first message, the second, QUIT. */
const lines = [
  line(1, 'server', '220 mx.one.test ESMTP'), line(2, 'client', 'EHLO me.test'), line(3, 'server', '250-mx.one.test\n250 PIPELINING'),
  line(4, 'client', 'MAIL FROM:<a@me.test>', 'M1'), line(5, 'server', '250 2.1.0 Ok', 'M1'),
  line(6, 'client', 'MAIL FROM:<b@me.test>', 'M2'), line(7, 'server', '250 2.1.0 Ok', 'M2'),
  line(8, 'client', 'QUIT'), line(9, 'server', '221 2.0.0 Bye'),
];

function chunk(id: string, part: TranscriptLine[], at = T0): TranscriptChunk {
  return {
    connection: {
      id, startedAt: at, endedAt: at + 100, host: 'mx.one.test', protocol: 'smtp', address: '192.0.2.9', port: 25, localAddress: null, localPort: null,
      tls: null, helo: 'me.test', tenant: 'a', messages: 2, commands: 4, lines: 9, bytesStored: 100, truncated: false, ended: 'quit',
    },
    messages: part.filter((l) => l.queueId !== null && /^MAIL/.test(l.text)).map((l, i) => ({ n: i + 1, at: l.at, queueId: l.queueId!, tenant: 'a', recipients: ['r@one.test'] })),
    lines: part,
  };
}

/** The rows as `readConnection` gives them. */
const rows = (part: TranscriptLine[]) => part.map((l) => ({ seq: l.seq, at: l.at, dir: l.dir, queue_id: l.queueId, text: l.text }));

/** What a version that wrote a row per line left behind. */
function writeAsRows(id: string, part: TranscriptLine[]): void {
  const insert = db.prepare(`INSERT INTO commands (connection_id, seq, at, dir, queue_id, text) VALUES (?, ?, ?, ?, ?, ?)`);
  for (const l of part) insert.run(id, l.seq, l.at, l.dir, l.queueId, l.text);
}

const count = (table: string) => (db.prepare(`SELECT COUNT(*) AS n FROM ${table}`).get() as { n: number }).n;

describe('transcript storage', () => {
  it('stores a chunk\'s lines as one row and reads every chunk of a session back in order', () => {
    for (const part of [lines.slice(0, 5), lines.slice(5, 7), lines.slice(7)]) write({ op: 'recordTranscript', chunk: chunk('C1', part) });
    expect(count('transcript_chunks')).toBe(3);
    expect(count('commands')).toBe(0);
    const session = readConnection(db, 'C1')!;
    expect(session.commands).toEqual(rows(lines));
    expect(Object.keys(session)).toEqual(['connection', 'messages', 'commands']);
  });

  it('writes no chunk row for a chunk without lines (a connection that failed)', () => {
    write({ op: 'recordTranscript', chunk: chunk('C1', []) });
    expect(count('transcript_chunks')).toBe(0);
    expect(readConnection(db, 'C1')!.commands).toEqual([]);
  });

  it('merges the rows an earlier version wrote with the chunks written since, by seq', () => {
    write({ op: 'recordTranscript', chunk: chunk('C1', []) });
    writeAsRows('C1', lines.slice(0, 5));
    write({ op: 'recordTranscript', chunk: chunk('C1', lines.slice(5)) });
    expect(readConnection(db, 'C1')!.commands).toEqual(rows(lines));
  });

  it('reads a database of an earlier version, one without the chunks table', () => {
    write({ op: 'recordTranscript', chunk: chunk('C1', []) });
    writeAsRows('C1', lines);
    db.exec(`DROP TABLE transcript_chunks`);
    expect(readConnection(db, 'C1')!.commands).toEqual(rows(lines));
  });

  it('prunes old sessions\' chunks and per-line rows alike, keeping newer sessions whole', () => {
    write({ op: 'recordTranscript', chunk: chunk('C-OLD', lines.slice(5), T0 - 10_000) });
    writeAsRows('C-OLD', lines.slice(0, 5));
    write({ op: 'recordTranscript', chunk: chunk('C-NEW', lines.slice(5), T0 + 10_000) });
    writeAsRows('C-NEW', lines.slice(0, 5));
    expect(write({ op: 'pruneTranscripts', before: T0 })).toBe(1);
    expect(readConnection(db, 'C-OLD')).toBeUndefined();
    expect(db.prepare(`SELECT DISTINCT connection_id FROM transcript_chunks UNION SELECT DISTINCT connection_id FROM commands`).pluck().all()).toEqual(['C-NEW']);
    expect(readConnection(db, 'C-NEW')!.commands).toEqual(rows(lines));
  });

  it('reads the lines it can around a damaged chunk and names the lines it cannot', () => {
    for (const part of [lines.slice(0, 5), lines.slice(5, 7), lines.slice(7)]) write({ op: 'recordTranscript', chunk: chunk('C1', part) });
    db.prepare(`UPDATE transcript_chunks SET data = randomblob(40) WHERE first_seq = 6`).run();
    const session = readConnection(db, 'C1')!;
    expect(session.commands).toEqual(rows([...lines.slice(0, 5), ...lines.slice(7)]));
    expect(session.unreadable).toEqual([{ first_seq: 6, last_seq: 7, at: lines[5].at, error: expect.any(String) }]);
  });
});

describe('a batch\'s chunks merged per session', () => {
  it('gives one chunk a session, its last row, every line and message in order, and stores the same as chunk by chunk', () => {
    // Each message numbered in the session (M1 first, M2 second), as the client numbers them.
    const chunks = [lines.slice(0, 5), lines.slice(5, 7), lines.slice(7)].map((part) => {
      const c = chunk('S1', part);
      return { ...c, messages: c.messages.map((m) => ({ ...m, n: Number(m.queueId.slice(1)) })) };
    });
    const merged = mergeChunks([chunks[0], chunk('S2', lines.slice(0, 3)), chunks[1], chunks[2]]);
    expect(merged.map((c) => c.connection.id)).toEqual(['S1', 'S2']);
    expect(merged[0].connection).toBe(chunks[2].connection);
    expect(merged[0].lines.map((l) => l.seq)).toEqual([1, 2, 3, 4, 5, 6, 7, 8, 9]);
    expect(merged[0].messages.map((m) => m.queueId)).toEqual(['M1', 'M2']);
    // The chunks handed in are left as they were.
    expect(chunks[0].lines).toHaveLength(5);

    for (const c of chunks) write({ op: 'recordTranscript', chunk: c });
    const oneByOne = readConnection(db, 'S1');
    db.exec('DELETE FROM transcript_chunks; DELETE FROM connections; DELETE FROM connection_messages;');
    write({ op: 'recordTranscript', chunk: merged[0] });
    expect(count('transcript_chunks')).toBe(1);
    expect(readConnection(db, 'S1')).toEqual(oneByOne);
  });
});
