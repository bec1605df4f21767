/*
 * What outbound session transcripts cost the queue database: the same sessions' transcripts
 * written the way earlier versions did (a row of `commands` per line) and the way they are written
 * now (a compressed row of `transcript_chunks` per chunk), each into a fresh queue database, in one
 * run, batch for batch in turn so that the machine's load falls on both alike.
 *
 * The sessions: BENCH_SESSIONS (default 5,000) sessions to a Postfix-like MX, each carrying one to
 * three messages (one to three recipients each) after STARTTLS, as chunks the way
 * delivery-transcript.ts hands them over: one per message, the first with the handshake, the last
 * with QUIT. They are written as queue-records.ts does, in batches (BENCH_BATCH chunks per
 * transaction, default 100: 200 messages a second for its 500 ms), through the writer thread's own
 * statements (queue-store-sql.ts `createWriter`), synchronous = OFF as for any transcript batch (between sync points, queue-store-worker.ts).
 * The per-line rows are written by the statement earlier versions used, the session and message
 * rows by the same writer for both.
 * No checkpoint runs during the writes, so the WAL holds every page the commits wrote: the
 * database and WAL files' growth is what the device was handed. After it, a checkpoint gives the
 * size the transcripts keep in queue.db.
 * Bounded: BENCH_SECONDS (default 60) for both ways together; fewer sessions are written when it
 * runs out, and the figures are per message written either way.
 * A third database gets the session and message rows alone (what both ways write besides the
 * lines), so that the lines' own share can be told apart.
 * Gives: a table, and `RESULT {json}` last: transcript_bytes_per_msg_rows,
 *   transcript_bytes_per_msg_chunks, ratio (rows / chunks), cpu_us_rows, cpu_us_chunks (the
 *   writing thread's CPU per message), then db_bytes_per_msg_* (kept after the checkpoint) and
 *   the session rows' own figures.
 */
import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { newQueueId } from '../base/base-queue-id.js';
import type { TranscriptChunk, TranscriptConnection, TranscriptLine } from '../delivery/index.js';
import { configure, createWriter, migrate, SCHEMA } from '../queue/queue-store-sql.js';
import { printResult } from './bench-result.js';

const SESSIONS = Number(process.env.BENCH_SESSIONS ?? 5_000);
const BATCH = Number(process.env.BENCH_BATCH ?? 100);
const SECONDS = Number(process.env.BENCH_SECONDS ?? 60);

const pick = <T>(items: readonly T[]): T => items[Math.floor(Math.random() * items.length)];
const DOMAINS = ['gmail.example', 'outlook.example', 'mail.example.de', 'corp.example.com', 'isp.example.net'];
const REPLIES = ['250 2.0.0 Ok: queued as ', '250 2.0.0 OK  1733564000 ', '250 Message accepted for delivery id='];

/** One session's chunks, with its lines numbered and timed as delivery-transcript.ts does. */
function session(start: number): TranscriptChunk[] {
  const domain = pick(DOMAINS);
  const row: TranscriptConnection = {
    id: newQueueId(start), startedAt: start, endedAt: null, host: `mx1.${domain}`, protocol: 'smtp', address: '192.0.2.25', port: 25,
    localAddress: '198.51.100.7', localPort: 40_000 + Math.floor(Math.random() * 20_000), tls: 'TLSv1.3 TLS_AES_256_GCM_SHA384', helo: 'out1.ichidan.example',
    tenant: 'shop', messages: 0, commands: 0, lines: 0, bytesStored: 0, truncated: false, ended: null,
  };
  let at = start;
  let lines: TranscriptLine[] = [];
  const chunks: TranscriptChunk[] = [];
  const say = (dir: 'client' | 'server', text: string, queueId: string | null) => {
    at += dir === 'server' ? 2 + Math.floor(Math.random() * 30) : 0;
    row.lines++;
    if (dir === 'client' && !text.startsWith('<')) row.commands++;
    row.bytesStored += Buffer.byteLength(text);
    lines.push({ seq: row.lines, at, dir, queueId, text });
  };
  const hand = (messages: TranscriptChunk['messages']) => {
    chunks.push({ connection: { ...row }, lines, messages });
    lines = [];
  };
  say('server', `220 mx1.${domain} ESMTP`, null);
  for (const ehlo of [1, 2]) {
    say('client', 'EHLO out1.ichidan.example', null);
    say('server', `250-mx1.${domain}\n250-PIPELINING\n250-SIZE 52428800\n${ehlo === 1 ? '250-STARTTLS\n' : ''}250-ENHANCEDSTATUSCODES\n250-8BITMIME\n250-DSN\n250 SMTPUTF8`, null);
    if (ehlo === 1) {
      say('client', 'STARTTLS', null);
      say('server', '220 2.0.0 Ready to start TLS', null);
    }
  }
  for (let n = 1, count = 1 + Math.floor(Math.random() * 3); n <= count; n++) {
    const queueId = newQueueId(at);
    const size = 1_500 + Math.floor(Math.random() * 60_000);
    const recipients = Array.from({ length: 1 + Math.floor(Math.random() * 3) }, (_, i) => `user${Math.floor(Math.random() * 100_000)}.${i}@${domain}`);
    row.messages++;
    say('client', `MAIL FROM:<bounces+${queueId.toLowerCase()}@ichidan.example> SIZE=${size} BODY=8BITMIME`, queueId);
    for (const r of recipients) say('client', `RCPT TO:<${r}>`, queueId);
    say('client', 'DATA', queueId);
    say('server', '250 2.1.0 Ok', queueId);
    recipients.forEach(() => say('server', '250 2.1.5 Ok', queueId));
    say('server', '354 End data with <CR><LF>.<CR><LF>', queueId);
    say('client', `<${size} bytes>`, queueId);
    say('server', `${pick(REPLIES)}${Math.random().toString(36).slice(2, 12).toUpperCase()}`, queueId);
    hand([{ n, at, queueId, tenant: 'shop', recipients }]);
  }
  say('client', 'QUIT', null);
  say('server', '221 2.0.0 Bye', null);
  row.endedAt = at;
  row.ended = 'quit';
  hand([]);
  return chunks;
}

interface Way {
  /** `sessions`: the session and message rows alone, what both others write besides the lines. */
  name: 'sessions' | 'rows' | 'chunks';
  dir: string;
  db: Database.Database;
  /** Bytes of queue.db and its WAL before any transcript. */
  empty: number;
  /** Writes one batch of chunks as one transaction. */
  write: (chunks: TranscriptChunk[]) => void;
  cpuUs: number;
}

function open(name: Way['name']): Way {
  const dir = mkdtempSync(join(tmpdir(), `ichidan-bench-transcripts-${name}-`));
  const db = new Database(join(dir, 'queue.db'));
  configure(db, true);
  db.exec(SCHEMA);
  migrate(db);
  db.pragma('synchronous = OFF');
  db.pragma('wal_autocheckpoint = 0');
  const apply = createWriter(db);
  const insertLine = db.prepare(`INSERT OR REPLACE INTO commands (connection_id, seq, at, dir, queue_id, text) VALUES (?, ?, ?, ?, ?, ?)`);
  const sessionOnly = (chunk: TranscriptChunk) => apply({ op: 'recordTranscript', chunk: { ...chunk, lines: [] } });
  const one = {
    sessions: sessionOnly,
    rows: (chunk: TranscriptChunk) => {
      sessionOnly(chunk);
      for (const l of chunk.lines) insertLine.run(chunk.connection.id, l.seq, l.at, l.dir, l.queueId, l.text);
    },
    chunks: (chunk: TranscriptChunk) => apply({ op: 'recordTranscript', chunk }),
  }[name];
  const write = db.transaction((chunks: TranscriptChunk[]) => chunks.forEach(one));
  db.pragma('wal_checkpoint(TRUNCATE)');
  return { name, dir, db, empty: bytesOf(dir), write, cpuUs: 0 };
}

function bytesOf(dir: string): number {
  const size = (f: string) => { try { return statSync(join(dir, f)).size; } catch { return 0; } };
  return size('queue.db') + size('queue.db-wal');
}

const chunks = Array.from({ length: SESSIONS }, (_, i) => session(Date.now() - (SESSIONS - i) * 1_000)).flat()
  // Sessions run side by side: their chunks reach the writer interleaved, as the end of their messages comes.
  .sort((a, b) => (a.lines.at(-1)?.at ?? 0) - (b.lines.at(-1)?.at ?? 0));
const ways = [open('rows'), open('chunks'), open('sessions')];
const deadline = Date.now() + SECONDS * 1_000;
let written = 0;
let messages = 0;
for (; written < chunks.length && Date.now() < deadline; written += BATCH) {
  const batch = chunks.slice(written, written + BATCH);
  for (const way of ways) {
    const before = process.cpuUsage();
    way.write(batch);
    const used = process.cpuUsage(before);
    way.cpuUs += used.user + used.system;
  }
  messages += batch.reduce((n, c) => n + c.messages.length, 0);
}

const figures = ways.map((way) => {
  const grown = bytesOf(way.dir) - way.empty;
  way.db.pragma('wal_checkpoint(TRUNCATE)');
  const kept = bytesOf(way.dir) - way.empty;
  way.db.close();
  rmSync(way.dir, { recursive: true, force: true });
  return { name: way.name, bytesPerMsg: grown / messages, dbBytesPerMsg: kept / messages, cpuUs: way.cpuUs / messages };
});
const [rows, chunked, sessions] = figures;

console.log(`${messages} messages in ${Math.min(written, chunks.length)} chunks, batches of ${BATCH}`);
console.log('way\tDB+WAL bytes/msg\tkept in queue.db bytes/msg\twriter CPU µs/msg');
for (const f of figures) console.log(`${f.name}\t${f.bytesPerMsg.toFixed(0)}\t${f.dbBytesPerMsg.toFixed(0)}\t${f.cpuUs.toFixed(1)}`);
console.log(`ratio (rows / chunks, DB+WAL bytes): ${(rows.bytesPerMsg / chunked.bytesPerMsg).toFixed(2)}; `
  + `the lines alone (less the session and message rows): ${(rows.bytesPerMsg - sessions.bytesPerMsg).toFixed(0)} / ${(chunked.bytesPerMsg - sessions.bytesPerMsg).toFixed(0)} bytes`);
printResult({}, {
  transcript_bytes_per_msg_rows: rows.bytesPerMsg,
  transcript_bytes_per_msg_chunks: chunked.bytesPerMsg,
  ratio: rows.bytesPerMsg / chunked.bytesPerMsg,
  cpu_us_rows: rows.cpuUs,
  cpu_us_chunks: chunked.cpuUs,
  db_bytes_per_msg_rows: rows.dbBytesPerMsg,
  db_bytes_per_msg_chunks: chunked.dbBytesPerMsg,
  session_rows_bytes_per_msg: sessions.bytesPerMsg,
  cpu_us_session_rows: sessions.cpuUs,
  messages,
});
