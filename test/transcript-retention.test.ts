// Transcript retention (delivery.transcripts.retention): sessions that ended before it are deleted
// with their lines and message links at the first sweep after the start; the rest are kept.
import Database from 'better-sqlite3';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import type { TranscriptChunk } from '../delivery/index.js';
import { createWriter, migrate, SCHEMA } from '../queue/queue-store-sql.js';
import { baseConfig, startApp, waitUntil } from './helpers/app.js';
import { readTranscriptTables } from './helpers/records.js';

describe('transcript retention', () => {
  function session(id: string, endedAt: number): TranscriptChunk {
    return {
      connection: {
        id, startedAt: endedAt - 1000, endedAt, host: 'mx.remote.test', protocol: 'smtp', address: '127.0.0.9', port: 25, localAddress: '127.0.0.1', localPort: 4000,
        tls: null, helo: 'mx.ichidan.test', tenant: 'alpha', messages: 1, commands: 1, lines: 2, bytesStored: 20, truncated: false, ended: 'quit',
      },
      lines: [
        { seq: 1, at: endedAt - 900, dir: 'client', queueId: 'Q1', text: 'MAIL FROM:<a@b.test>' },
        { seq: 2, at: endedAt - 800, dir: 'server', queueId: 'Q1', text: '250 ok' },
      ],
      messages: [{ n: 1, at: endedAt - 950, queueId: 'Q1', tenant: 'alpha', recipients: ['x@remote.test'] }],
    };
  }

  it('deletes sessions that ended before the retention period, with their lines and message links, and keeps the rest', async () => {
    const dataDir = await mkdtemp(join(tmpdir(), 'ichidan-test-'));
    const day = 86_400_000;
    const db = new Database(join(dataDir, 'queue.db'));
    db.exec(SCHEMA);
    migrate(db);
    const apply = createWriter(db);
    apply({ op: 'recordTranscript', chunk: session('OLD', Date.now() - 3 * day) });
    apply({ op: 'recordTranscript', chunk: session('RECENT', Date.now() - day / 2) });
    db.close();
    const t = await startApp((dir) => baseConfig(dir, { delivery: { transcripts: { retention: '2d' } } }), { dataDir });
    try {
      // The first sweep after the start prunes; then hourly.
      await waitUntil(() => readTranscriptTables(dataDir).connections.length === 1, 5_000, 'the prune');
      const { connections, links, commands } = readTranscriptTables(dataDir);
      expect(connections.map((c) => c.id)).toEqual(['RECENT']);
      expect([...new Set(links.map((l) => l.connection_id))]).toEqual(['RECENT']);
      expect([...new Set(commands.map((l) => l.connection_id))]).toEqual(['RECENT']);
    } finally {
      await t.stop();
      await rm(dataDir, { recursive: true, force: true });
    }
  });
});
