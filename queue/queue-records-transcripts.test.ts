import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { TranscriptChunk, TranscriptConnection } from '../delivery/index.js';
import { configure } from './queue-store-sql.js';
import { createTranscriptWriter, mergeChunks, readConnection, TRANSCRIPTS_SCHEMA } from './queue-records-transcripts.js';

const T0 = 1_765_000_000_000;
let dir: string;
let db: Database.Database;
let write: ReturnType<typeof createTranscriptWriter>;

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'ichidan-transcripts-'));
  db = new Database(join(dir, 'queue.db'));
  configure(db, false);
  db.exec(TRANSCRIPTS_SCHEMA);
  write = createTranscriptWriter(db);
});

afterEach(() => {
  db.close();
  rmSync(dir, { recursive: true, force: true });
});

const row = (id: string, over: Partial<TranscriptConnection> = {}): TranscriptConnection => ({
  id, startedAt: T0, endedAt: null, host: 'mx.one.test', protocol: 'smtp', address: '192.0.2.9', port: 25, localAddress: '192.0.2.1', localPort: 40000,
  tls: null, helo: 'me.test', tenant: 'a', messages: 0, commands: 0, lines: 0, bytesStored: 0, truncated: false, ended: null, ...over,
});

/** A message's chunk of session `id`: `n` lines from `first`, tied to queue id `<id>.<message>`. */
function chunk(id: string, message: number, first: number, n: number, over: Partial<TranscriptConnection> = {}): TranscriptChunk {
  const queueId = `${id}.${message}`;
  const lines = Array.from({ length: n }, (_, i) => ({ seq: first + i, at: T0 + first + i, dir: (i % 2 ? 'server' : 'client') as 'client' | 'server', queueId, text: `line ${first + i}` }));
  return {
    connection: row(id, { messages: message, lines: first + n - 1, commands: Math.ceil((first + n - 1) / 2), ...over }),
    lines,
    messages: [{ n: message, at: T0 + first, queueId, tenant: 'a', recipients: ['r0@one.test', 'r1@one.test'] }],
  };
}

describe('transcript writer', () => {
  it('stores every line of a chunk in order, more lines than one statement writes included', () => {
    write({ op: 'recordTranscript', chunk: chunk('C1', 1, 1, 75) });
    const stored = readConnection(db, 'C1')!;
    expect(stored.commands.map((c) => c.seq)).toEqual(Array.from({ length: 75 }, (_, i) => i + 1));
    expect(stored.commands[74]).toEqual({ seq: 75, at: T0 + 75, dir: 'client', queue_id: 'C1.1', text: 'line 75' });
    expect(stored.messages).toEqual([{ n: 1, at: T0 + 1, queue_id: 'C1.1', tenant: 'a', recipients: 'r0@one.test,r1@one.test' }]);
    expect(stored.connection).toMatchObject({ id: 'C1', lines: 75, commands: 38, truncated: 0, ended: null, local_address: '192.0.2.1' });
  });

  it('merges a batch\'s chunks per session: its last row, all its lines and messages in order, sessions in order of first appearance', () => {
    const chunks = [
      chunk('C1', 1, 1, 10),
      chunk('C2', 1, 1, 4),
      chunk('C1', 2, 11, 10),
      chunk('C1', 3, 21, 3, { ended: 'quit', endedAt: T0 + 99, truncated: true }),
    ];
    const merged = mergeChunks(chunks);
    expect(merged.map((c) => c.connection.id)).toEqual(['C1', 'C2']);
    expect(merged[0].connection).toBe(chunks[3].connection);
    expect(merged[0].lines.map((l) => l.seq)).toEqual(Array.from({ length: 23 }, (_, i) => i + 1));
    expect(merged[0].messages.map((m) => m.n)).toEqual([1, 2, 3]);
    // The chunks handed in are left as they were.
    expect(chunks[0].lines).toHaveLength(10);

    for (const c of merged) write({ op: 'recordTranscript', chunk: c });
    const one = readConnection(db, 'C1')!;
    expect(one.connection).toMatchObject({ messages: 3, lines: 23, ended: 'quit', ended_at: T0 + 99, truncated: 1 });
    expect(one.commands.map((c) => c.queue_id)).toEqual([...Array(10).fill('C1.1'), ...Array(10).fill('C1.2'), ...Array(3).fill('C1.3')]);
    expect(readConnection(db, 'C2')!.commands).toHaveLength(4);
  });

  it('writes the same as chunk by chunk when merged', () => {
    const chunks = [chunk('C1', 1, 1, 5), chunk('C1', 2, 6, 5, { ended: 'closed', endedAt: T0 + 50 })];
    for (const c of chunks) write({ op: 'recordTranscript', chunk: c });
    const oneByOne = readConnection(db, 'C1');
    db.exec('DELETE FROM commands; DELETE FROM connections; DELETE FROM connection_messages;');
    for (const c of mergeChunks(chunks)) write({ op: 'recordTranscript', chunk: c });
    expect(readConnection(db, 'C1')).toEqual(oneByOne);
  });
});
