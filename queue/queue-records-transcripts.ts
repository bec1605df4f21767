/*
 * Outbound session transcripts in the queue database: their tables, how a chunk is written and
 * pruned (applied by the one writer thread, queue-store-worker.ts), and how `ichidan sessions`
 * reads them.
 *
 * A session may carry many messages: `connection_messages` ties each (its queue id, tenant,
 * recipients) to the session, and each command line also names the queue id of the message it was
 * part of (NULL for greeting, EHLO, STARTTLS, RSET between messages, QUIT). A line's seq counts
 * every line of the session; lines past the size cap are counted, not stored.
 * The lines of a chunk are one row of `transcript_chunks`, compressed together
 * (queue-records-transcript-chunks.ts). Earlier versions wrote a row per line into `commands`:
 * such rows are still read, merged with the chunks by seq, and pruned. A chunk that cannot be
 * read is reported as a gap of its seq range (`unreadable`), never as an error of the session.
 * Takes: `TranscriptChunk`s from delivery/ (delivery-transcript.ts), batched by queue-records.ts.
 * Settings: delivery.transcripts.retention (the pruning's `before`).
 */
import type Database from 'better-sqlite3';
import type { TranscriptChunk } from '../delivery/index.js';
import { decodeChunk, encodeChunk } from './queue-records-transcript-chunks.js';

export const TRANSCRIPTS_SCHEMA = `
CREATE TABLE IF NOT EXISTS connections (
  id TEXT PRIMARY KEY,
  started_at INTEGER NOT NULL,
  ended_at INTEGER,
  host TEXT NOT NULL,
  protocol TEXT NOT NULL,
  address TEXT NOT NULL,
  port INTEGER NOT NULL,
  local_address TEXT,
  local_port INTEGER,
  tls TEXT,
  helo TEXT NOT NULL,
  tenant TEXT,
  messages INTEGER NOT NULL,
  commands INTEGER NOT NULL,
  lines INTEGER NOT NULL,
  bytes_stored INTEGER NOT NULL,
  truncated INTEGER NOT NULL,
  ended TEXT
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS connections_started ON connections (started_at);
CREATE INDEX IF NOT EXISTS connections_host ON connections (host);
CREATE TABLE IF NOT EXISTS connection_messages (
  connection_id TEXT NOT NULL,
  n INTEGER NOT NULL,
  at INTEGER NOT NULL,
  queue_id TEXT NOT NULL,
  tenant TEXT NOT NULL,
  recipients TEXT NOT NULL,
  PRIMARY KEY (connection_id, n)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS connection_messages_queue_id ON connection_messages (queue_id);
CREATE TABLE IF NOT EXISTS commands (
  connection_id TEXT NOT NULL,
  seq INTEGER NOT NULL,
  at INTEGER NOT NULL,
  dir TEXT NOT NULL,
  queue_id TEXT,
  text TEXT NOT NULL,
  PRIMARY KEY (connection_id, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS transcript_chunks (
  connection_id TEXT NOT NULL,
  first_seq INTEGER NOT NULL,
  last_seq INTEGER NOT NULL,
  at INTEGER NOT NULL,
  data BLOB NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS transcript_chunks_connection ON transcript_chunks (connection_id, first_seq);
`;

export type TranscriptWriteOp =
  | { op: 'recordTranscript'; chunk: TranscriptChunk }
  | { op: 'pruneTranscripts'; before: number };

/**
 * Chunks of the same session merged into one (its row as the last chunk has it, every line and
 * message in order), in the order the sessions first appear: a pooled session carries many
 * messages between two writes, and its row and its chunk need then be written once, not once a message.
 */
export function mergeChunks(chunks: TranscriptChunk[]): TranscriptChunk[] {
  const byId = new Map<string, TranscriptChunk>();
  for (const chunk of chunks) {
    const merged = byId.get(chunk.connection.id);
    if (!merged) {
      byId.set(chunk.connection.id, { connection: chunk.connection, lines: [...chunk.lines], messages: [...chunk.messages] });
      continue;
    }
    merged.connection = chunk.connection;
    merged.lines.push(...chunk.lines);
    merged.messages.push(...chunk.messages);
  }
  return [...byId.values()];
}

/** Prepares the transcript statements on the writer's connection; returns the function that applies one operation. */
export function createTranscriptWriter(db: Database.Database): (op: TranscriptWriteOp) => unknown {
  const s = {
    saveConnection: db.prepare(`INSERT INTO connections (id, started_at, ended_at, host, protocol, address, port, local_address, local_port, tls, helo, tenant,
      messages, commands, lines, bytes_stored, truncated, ended)
      VALUES (@id, @startedAt, @endedAt, @host, @protocol, @address, @port, @localAddress, @localPort, @tls, @helo, @tenant,
      @messages, @commands, @lines, @bytesStored, @truncated, @ended)
      ON CONFLICT (id) DO UPDATE SET ended_at = excluded.ended_at, local_address = excluded.local_address, local_port = excluded.local_port,
      tls = excluded.tls, tenant = excluded.tenant, messages = excluded.messages, commands = excluded.commands, lines = excluded.lines,
      bytes_stored = excluded.bytes_stored, truncated = excluded.truncated, ended = excluded.ended`),
    insertConnectionMessage: db.prepare(`INSERT OR REPLACE INTO connection_messages (connection_id, n, at, queue_id, tenant, recipients) VALUES (?, ?, ?, ?, ?, ?)`),
    insertChunk: db.prepare(`INSERT OR REPLACE INTO transcript_chunks (connection_id, first_seq, last_seq, at, data) VALUES (?, ?, ?, ?, ?)`),
    pruneChunks: db.prepare(`DELETE FROM transcript_chunks WHERE connection_id IN (SELECT id FROM connections WHERE COALESCE(ended_at, started_at) < ?)`),
    pruneCommands: db.prepare(`DELETE FROM commands WHERE connection_id IN (SELECT id FROM connections WHERE COALESCE(ended_at, started_at) < ?)`),
    pruneConnectionMessages: db.prepare(`DELETE FROM connection_messages WHERE connection_id IN (SELECT id FROM connections WHERE COALESCE(ended_at, started_at) < ?)`),
    pruneConnections: db.prepare(`DELETE FROM connections WHERE COALESCE(ended_at, started_at) < ?`),
  };
  return (op) => {
    switch (op.op) {
      case 'recordTranscript': {
        const { connection: c, lines, messages } = op.chunk;
        s.saveConnection.run({ ...c, truncated: c.truncated ? 1 : 0 });
        for (const m of messages) s.insertConnectionMessage.run(c.id, m.n, m.at, m.queueId, m.tenant, m.recipients.join(','));
        if (lines.length > 0) {
          const chunk = encodeChunk(lines);
          s.insertChunk.run(c.id, chunk.firstSeq, chunk.lastSeq, chunk.at, chunk.data);
        }
        return null;
      }
      case 'pruneTranscripts':
        s.pruneChunks.run(op.before);
        s.pruneCommands.run(op.before);
        s.pruneConnectionMessages.run(op.before);
        return s.pruneConnections.run(op.before).changes;
    }
  };
}

export interface ConnectionRow {
  id: string;
  started_at: number;
  ended_at: number | null;
  host: string;
  protocol: string;
  address: string;
  port: number;
  local_address: string | null;
  local_port: number | null;
  tls: string | null;
  helo: string;
  tenant: string | null;
  messages: number;
  commands: number;
  lines: number;
  bytes_stored: number;
  truncated: number;
  ended: string | null;
}

export interface ConnectionMessageRow { n: number; at: number; queue_id: string; tenant: string; recipients: string }
export interface CommandRow { seq: number; at: number; dir: 'client' | 'server'; queue_id: string | null; text: string }

/** The newest outbound sessions first; `host` matches the next hop's name or its address. */
export function readConnections(db: Database.Database, opts: { last: number; host?: string }): ConnectionRow[] {
  return db.prepare(`SELECT * FROM connections WHERE (@host IS NULL OR host = @host OR address = @host)
    ORDER BY started_at DESC, id DESC LIMIT @last`).all({ host: opts.host ?? null, last: opts.last }) as ConnectionRow[];
}

/** Lines of a session that were stored but cannot be read back: the seq range of a damaged chunk. */
export interface UnreadableLines { first_seq: number; last_seq: number; at: number; error: string }

export interface StoredSession {
  connection: ConnectionRow;
  messages: ConnectionMessageRow[];
  /** The lines that could be read, in order. */
  commands: CommandRow[];
  /** Present only when some stored lines could not be read. */
  unreadable?: UnreadableLines[];
}

/** One session: its row, the messages it carried, and its stored lines in order. */
export function readConnection(db: Database.Database, id: string): StoredSession | undefined {
  const connection = db.prepare(`SELECT * FROM connections WHERE id = ?`).get(id) as ConnectionRow | undefined;
  if (!connection) return undefined;
  const messages = db.prepare(`SELECT n, at, queue_id, tenant, recipients FROM connection_messages WHERE connection_id = ? ORDER BY n`).all(id) as ConnectionMessageRow[];
  const commands = db.prepare(`SELECT seq, at, dir, queue_id, text FROM commands WHERE connection_id = ? ORDER BY seq`).all(id) as CommandRow[];
  const unreadable: UnreadableLines[] = [];
  for (const row of readChunks(db, id)) {
    try {
      for (const l of decodeChunk(row)) commands.push({ seq: l.seq, at: l.at, dir: l.dir, queue_id: l.queueId, text: l.text });
    } catch (err) {
      unreadable.push({ first_seq: row.first_seq, last_seq: row.last_seq, at: row.at, error: (err as Error).message });
    }
  }
  commands.sort((a, b) => a.seq - b.seq);
  return unreadable.length > 0 ? { connection, messages, commands, unreadable } : { connection, messages, commands };
}

interface ChunkRow { first_seq: number; last_seq: number; at: number; data: Buffer }

/** A database last written by a version that wrote a row per line has no chunks (read-only readers cannot add the table). */
function readChunks(db: Database.Database, id: string): ChunkRow[] {
  if (db.prepare(`SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'transcript_chunks'`).get() === undefined) return [];
  return db.prepare(`SELECT first_seq, last_seq, at, data FROM transcript_chunks WHERE connection_id = ? ORDER BY first_seq`).all(id) as ChunkRow[];
}
