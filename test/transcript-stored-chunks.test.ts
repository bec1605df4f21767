// `ichidan sessions show` over the two ways transcripts have been stored: a session written a row
// per line by an earlier version (its database has no chunks table, and the CLI opens it read-only)
// and the same session written in compressed chunks print the same, text and JSON; a damaged chunk
// leaves the rest of the session readable and its lines marked.
import { execFile } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import Database from 'better-sqlite3';
import { stringify } from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { TranscriptChunk, TranscriptLine } from '../delivery/index.js';
import { createWriter, migrate, SCHEMA } from '../queue/queue-store-sql.js';
import { CLI } from './helpers/child.js';

const exec = promisify(execFile);
const T0 = Date.UTC(2026, 11, 7, 9, 30);

const texts: Array<['client' | 'server', string, string | null]> = [
  ['server', '220 mx.remote.test ESMTP', null], ['client', 'EHLO mx.ichidan.test', null], ['server', '250-mx.remote.test\n250-PIPELINING\n250 8BITMIME', null],
  ['client', 'MAIL FROM:<a@ichidan.test>', 'Q1'], ['client', 'RCPT TO:<x@remote.test>', 'Q1'], ['client', 'DATA', 'Q1'],
  ['server', '250 2.1.0 Ok', 'Q1'], ['server', '250 2.1.5 Ok', 'Q1'], ['server', '354 go ahead', 'Q1'], ['client', '<812 bytes>', 'Q1'], ['server', '250 2.0.0 Ok: queued', 'Q1'],
  ['client', 'QUIT', null], ['server', '221 2.0.0 Bye', null],
];
const lines: TranscriptLine[] = texts.map(([dir, text, queueId], i) => ({ seq: i + 1, at: T0 + i * 5, dir, queueId, text }));

function chunk(part: TranscriptLine[], messages: TranscriptChunk['messages'] = []): TranscriptChunk {
  return {
    connection: {
      id: 'S1', startedAt: T0, endedAt: T0 + 100, host: 'mx.remote.test', protocol: 'smtp', address: '127.0.0.9', port: 25, localAddress: '127.0.0.1', localPort: 4000,
      tls: null, helo: 'mx.ichidan.test', tenant: 'alpha', messages: 1, commands: 6, lines: 15, bytesStored: 300, truncated: true, ended: 'quit',
    },
    lines: part,
    messages,
  };
}

const link = [{ n: 1, at: T0 + 15, queueId: 'Q1', tenant: 'alpha', recipients: ['x@remote.test'] }];

/** A data folder whose queue.db holds session S1: `asRows` as an earlier version left it (a row a line, no chunks table). */
async function dataDir(asRows: boolean, damage = false): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'ichidan-test-'));
  const db = new Database(join(dir, 'queue.db'));
  db.exec(SCHEMA);
  migrate(db);
  const apply = createWriter(db);
  if (asRows) {
    apply({ op: 'recordTranscript', chunk: chunk([], link) });
    const insert = db.prepare(`INSERT INTO commands (connection_id, seq, at, dir, queue_id, text) VALUES ('S1', ?, ?, ?, ?, ?)`);
    for (const l of lines) insert.run(l.seq, l.at, l.dir, l.queueId, l.text);
    db.exec(`DROP TABLE transcript_chunks`);
  } else {
    apply({ op: 'recordTranscript', chunk: chunk(lines.slice(0, 11), link) });
    apply({ op: 'recordTranscript', chunk: chunk(lines.slice(11)) });
  }
  if (damage) db.prepare(`UPDATE transcript_chunks SET data = zeroblob(30) WHERE first_seq = 1`).run();
  db.close();
  await writeFile(join(dir, 'ichidan.yaml'), stringify({ dataDir: dir }));
  return dir;
}

const show = async (dir: string, ...args: string[]) => (await exec(process.execPath, [CLI, 'sessions', 'show', 'S1', ...args, '-c', join(dir, 'ichidan.yaml')])).stdout;

describe('sessions show over stored transcripts', () => {
  const dirs: string[] = [];
  let rows: string;
  let chunks: string;
  let damaged: string;
  beforeAll(async () => {
    [rows, chunks, damaged] = await Promise.all([dataDir(true), dataDir(false), dataDir(false, true)]);
    dirs.push(rows, chunks, damaged);
  });
  afterAll(() => Promise.all(dirs.map((d) => rm(d, { recursive: true, force: true }))));

  it('prints a session stored in chunks exactly as the same session stored a row per line', async () => {
    const text = await show(rows);
    expect(text).toMatch(/\tQ1\tC: RCPT TO:<x@remote\.test>\n/);
    expect(text).toMatch(/\t-\tS: 250 8BITMIME\n/);
    expect(text).toMatch(/\.\.\. 2 more lines counted but not stored\n$/);
    expect(await show(chunks)).toBe(text);
    expect(await show(chunks, '--json')).toBe(await show(rows, '--json'));
  });

  it('shows the lines of the chunks it can read and marks the lines of a damaged one in their place', async () => {
    const out = (await show(damaged)).split('\n');
    const at = (seq: number) => new Date(T0 + (seq - 1) * 5).toISOString();
    expect(out[3]).toMatch(/^message 1\tQ1\t/);
    expect(out[4]).toMatch(new RegExp(`^${at(1)}\t\\?\t!! lines 1-11 were stored but cannot be read \\(.+\\)$`));
    expect(out.slice(5)).toEqual([`${at(12)}\t-\tC: QUIT`, `${at(13)}\t-\tS: 221 2.0.0 Bye`, '... 2 more lines counted but not stored', '']);
    const json = JSON.parse(await show(damaged, '--json')) as { commands: unknown[]; unreadable: unknown[] };
    expect(json.commands).toHaveLength(2);
    expect(json.unreadable).toEqual([{ first_seq: 1, last_seq: 11, at: T0, error: expect.any(String) }]);
  });
});
