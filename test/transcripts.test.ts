// Outbound session transcripts: one session carrying several messages, stored, listed and shown by the CLI; retention.
import Database from 'better-sqlite3';
import { execFile } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import nodemailer from 'nodemailer';
import { stringify } from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { TranscriptChunk } from '../delivery/index.js';
import { createWriter, migrate, SCHEMA } from '../queue/queue-store-sql.js';
import type { CommandRow, ConnectionMessageRow, ConnectionRow } from '../queue/queue-records-transcripts.js';
import { baseConfig, startApp, waitUntil, type TestApp } from './helpers/app.js';
import { startSink, type Sink } from './helpers/sink.js';

const exec = promisify(execFile);
const CLI = join(import.meta.dirname, '..', 'dist', 'mta', 'mta-main.js');

function readTables(dataDir: string): { connections: ConnectionRow[]; links: Array<ConnectionMessageRow & { connection_id: string }>; commands: Array<CommandRow & { connection_id: string }> } {
  const db = new Database(join(dataDir, 'queue.db'), { readonly: true });
  try {
    return {
      connections: db.prepare(`SELECT * FROM connections ORDER BY started_at, id`).all() as ConnectionRow[],
      links: db.prepare(`SELECT * FROM connection_messages ORDER BY connection_id, n`).all() as never,
      commands: db.prepare(`SELECT * FROM commands ORDER BY connection_id, seq`).all() as never,
    };
  } finally {
    db.close();
  }
}

async function send(port: number, to: string, text: string): Promise<string> {
  const mailer = nodemailer.createTransport({ host: '127.0.0.1', port, ignoreTLS: true });
  const info = await mailer.sendMail({ from: 'me@sender.test', to, subject: 'transcript test', text });
  mailer.close();
  return /queued as ([0-9A-Z]{16})$/.exec(info.response)![1];
}

describe('session transcripts', () => {
  let sink: Sink;
  let t: TestApp;

  beforeAll(async () => {
    sink = await startSink({ host: '127.0.0.2' });
    t = await startApp((dir) => baseConfig(dir, {
      trustedNetworks: ['127.0.0.1/32'],
      routes: { 'remote.test': { host: '127.0.0.2', port: sink.port } },
      delivery: { site: { idleTimeout: '1s' } },
    }));
  });
  afterAll(async () => {
    await t?.stop();
    await sink?.close();
  });

  it('records one session carrying several messages, command by command, and the CLI lists and shows it', async () => {
    const qids: string[] = [];
    for (const [i, rcpt] of ['one@remote.test', 'two@remote.test', 'three@remote.test'].entries()) {
      qids.push(await send(t.port('mx'), rcpt, `BODY-MARKER-${i} must never reach the transcript`));
      await sink.waitFor(i + 1);
    }
    // The session goes idle, is QUIT after the site's idle time (1 s here), and its row is completed.
    await waitUntil(() => readTables(t.dataDir).connections.some((c) => c.ended !== null), 10_000, 'the session to end');
    const { connections, links, commands } = readTables(t.dataDir);

    expect(connections).toHaveLength(1);
    const c = connections[0];
    expect(c).toMatchObject({ host: '127.0.0.2', address: '127.0.0.2', port: sink.port, protocol: 'smtp', helo: 'mx.ichidan.test', messages: 3, truncated: 0, ended: 'quit', local_address: '127.0.0.1' });
    expect(c.tls).toMatch(/^TLSv1\.[23] /);
    expect(c.ended_at).toBeGreaterThanOrEqual(c.started_at);
    expect(c.lines).toBe(commands.length);
    expect(c.bytes_stored).toBe(commands.reduce((n, l) => n + Buffer.byteLength(l.text), 0));

    expect(links.map((l) => [l.connection_id, l.n, l.queue_id, l.recipients])).toEqual([
      [c.id, 1, qids[0], 'one@remote.test'], [c.id, 2, qids[1], 'two@remote.test'], [c.id, 3, qids[2], 'three@remote.test'],
    ]);
    expect(JSON.stringify(commands)).not.toContain('BODY-MARKER');
    expect(commands.map((l) => l.seq)).toEqual(commands.map((_, i) => i + 1));
    for (let i = 1; i < commands.length; i++) expect(commands[i].at).toBeGreaterThanOrEqual(commands[i - 1].at);

    const line = (l: CommandRow) => `${l.dir === 'client' ? 'C' : 'S'} ${l.text.split('\n')[0]}`;
    // Before any message: greeting, EHLO, STARTTLS and its 220, EHLO again over TLS.
    const opening = commands.filter((l) => l.queue_id === null).slice(0, 6).map(line);
    expect(opening[0]).toMatch(/^S 220 /);
    expect(opening[1]).toBe('C EHLO mx.ichidan.test');
    expect(opening[3]).toBe('C STARTTLS');
    expect(opening[4]).toMatch(/^S 220 /);
    expect(opening[5]).toBe('C EHLO mx.ichidan.test');
    for (const [i, qid] of qids.entries()) {
      const rcpt = ['one', 'two', 'three'][i];
      // Each message's lines, pipelined: commands first, then their replies in the same order.
      expect(commands.filter((l) => l.queue_id === qid).map(line).map((l) => l.replace(/^S (\d{3}) .*/, 'S $1'))).toEqual([
        expect.stringMatching(/^C MAIL FROM:<me@sender\.test>( |$)/),
        `C RCPT TO:<${rcpt}@remote.test>`,
        'C DATA',
        'S 250', 'S 250', 'S 354',
        expect.stringMatching(/^C <\d+ bytes>$/),
        'S 250',
      ]);
    }
    expect(commands.slice(-2).map(line)).toEqual(['C QUIT', expect.stringMatching(/^S 221 /)]);
    expect(commands.slice(-2).every((l) => l.queue_id === null)).toBe(true);
    expect(t.logs.filter((l) => l.msg === 'could not record a session transcript')).toEqual([]);

    const dir = await mkdtemp(join(tmpdir(), 'ichidan-cli-'));
    try {
      await writeFile(join(dir, 'ichidan.yaml'), stringify({ dataDir: t.dataDir }));
      const cli = (...args: string[]) => exec(process.execPath, [CLI, ...args, '-c', join(dir, 'ichidan.yaml')]);
      const list = (await cli('sessions', 'list')).stdout.split('\n');
      expect(list[0]).toBe('id\tstarted\tduration_ms\thost\taddress\ttls\tmessages\tcommands\tstored\tended');
      expect(list[1].split('\t')).toEqual([c.id, expect.any(String), `${c.ended_at! - c.started_at}`, '127.0.0.2', `127.0.0.2:${sink.port}`, c.tls, '3', `${c.commands}`, `${c.bytes_stored} B`, 'quit']);
      expect((await cli('sessions', 'list', '--host', '127.0.0.2', '--last', '1')).stdout.split('\n')[1]).toMatch(new RegExp(`^${c.id}\t`));
      expect((await cli('sessions', 'list', '--host', 'elsewhere.test')).stdout.trim().split('\n')).toHaveLength(1);

      const show = (await cli('sessions', 'show', c.id)).stdout;
      expect(show).toContain(`session ${c.id} (smtp) to 127.0.0.2 [127.0.0.2]:${sink.port} from 127.0.0.1:`);
      expect(show).toContain(`tls ${c.tls}; tenant _relay; 3 messages`);
      for (const [i, qid] of qids.entries()) expect(show).toMatch(new RegExp(`^message ${i + 1}\t${qid}\t_relay\t`, 'm'));
      expect(show).toMatch(new RegExp(`\t${qids[1]}\tC: RCPT TO:<two@remote\\.test>$`, 'm'));
      expect(show).toMatch(/\t-\tC: STARTTLS$/m);
      expect(show).toMatch(/\t-\tC: QUIT$/m);
      expect(show).not.toContain('BODY-MARKER');

      const missing = await cli('sessions', 'show', 'NOSUCHSESSION').then(() => null, (e: { code: number; stderr: string }) => e);
      expect(missing?.code).toBe(1);
      expect(missing?.stderr).toBe('no session NOSUCHSESSION\n');
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('completes the transcript of an idle session when Ichidan stops', async () => {
    const other = await startSink({ host: '127.0.0.3' });
    const app = await startApp((dir) => baseConfig(dir, {
      trustedNetworks: ['127.0.0.1/32'],
      routes: { 'remote.test': { host: '127.0.0.3', port: other.port } },
    }), { dataDir: await mkdtemp(join(tmpdir(), 'ichidan-test-')) });
    try {
      const qid = await send(app.port('mx'), 'one@remote.test', 'hello');
      await other.waitFor(1);
      await waitUntil(() => readTables(app.dataDir).links.length === 1, 5_000, 'the first transcript chunk');
      // Well within the cache's idle time: the session is still open when the stop begins.
      expect(readTables(app.dataDir).connections[0].ended).toBeNull();
      await app.stop();
      const { connections, links, commands } = readTables(app.dataDir);
      expect(connections).toMatchObject([{ ended: 'quit', messages: 1 }]);
      expect(links.map((l) => l.queue_id)).toEqual([qid]);
      expect(commands.at(-2)?.text).toBe('QUIT');
      expect(commands.at(-1)?.text).toMatch(/^221 /);
      expect(app.logs.filter((l) => l.msg === 'could not record a session transcript')).toEqual([]);
    } finally {
      await other.close();
      await rm(app.dataDir, { recursive: true, force: true });
    }
  });

  it('records nothing when transcripts are switched off', async () => {
    const other = await startSink({ host: '127.0.0.4' });
    const app = await startApp((dir) => baseConfig(dir, {
      trustedNetworks: ['127.0.0.1/32'],
      routes: { 'remote.test': { host: '127.0.0.4', port: other.port } },
      delivery: { transcripts: { enabled: false } },
    }), { dataDir: await mkdtemp(join(tmpdir(), 'ichidan-test-')) });
    try {
      await send(app.port('mx'), 'one@remote.test', 'hello');
      await other.waitFor(1);
      await app.stop();
      const { connections, commands } = readTables(app.dataDir);
      expect(connections).toEqual([]);
      expect(commands).toEqual([]);
    } finally {
      await other.close();
      await rm(app.dataDir, { recursive: true, force: true });
    }
  });
});

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
      await waitUntil(() => readTables(dataDir).connections.length === 1, 5_000, 'the prune');
      const { connections, links, commands } = readTables(dataDir);
      expect(connections.map((c) => c.id)).toEqual(['RECENT']);
      expect([...new Set(links.map((l) => l.connection_id))]).toEqual(['RECENT']);
      expect([...new Set(commands.map((l) => l.connection_id))]).toEqual(['RECENT']);
    } finally {
      await t.stop();
      await rm(dataDir, { recursive: true, force: true });
    }
  });
});
