// The spool journal after a crash of the machine: the spool file and the queue record of an
// acknowledged message are written without a sync of their own, so a power cut may lose them. The
// real process is killed with SIGKILL (the journal is not settled), then what such a cut could lose
// is removed by hand — a record, a file, a file cut short or zeroed, a delivery outcome — and the next start
// must bring every acknowledged message back from the journal, byte for byte, deliver each, and not
// deliver again what was delivered.
import { existsSync } from 'node:fs';
import { mkdtemp, open, readdir, readFile, rm, stat, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import Database from 'better-sqlite3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startChild } from './helpers/child.js';
import { RawSmtp } from './helpers/raw-smtp.js';
import { startSink, type Sink } from './helpers/sink.js';
import { waitUntil } from './helpers/app.js';

async function send(port: number, to: string | string[], token: string): Promise<string> {
  const c = await RawSmtp.open(port);
  await c.reply();
  await c.command('EHLO client.test');
  await c.command('MAIL FROM:<x@remote.test>');
  for (const r of [to].flat()) await c.command(`RCPT TO:<${r}>`);
  await c.command('DATA');
  c.send(`Subject: ${token}\r\nX-Token: ${token}\r\n\r\n${'journal line\r\n'.repeat(40)}.\r\n`);
  const reply = (await c.reply()).join('\n');
  await c.command('QUIT');
  c.close();
  expect(reply).toMatch(/^250 /);
  return reply.split(' ').pop()!;
}

describe('spool journal replay', () => {
  let sink: Sink;
  let dataDir: string;
  let accepting = false;

  beforeAll(async () => {
    // `later@` is deferred until `accepting`; `now@` is delivered at once.
    sink = await startSink({ host: '127.0.0.2', rcpt: (address) => (address.startsWith('later') && !accepting ? { code: 451, text: '4.3.0 later' } : undefined) });
    dataDir = await mkdtemp(join(tmpdir(), 'ichidan-journal-'));
  });
  afterAll(async () => {
    await sink?.close();
    await rm(dataDir, { recursive: true, force: true });
  });

  /** A config in `dir` relaying everything to the sink; and a log collected in memory. */
  async function setUp(dir: string): Promise<{ configFile: string; logs: string[]; logFile: Writable }> {
    const configFile = join(dir, 'config.yaml');
    await writeFile(configFile, [
      `dataDir: ${dir}`,
      'hostname: journal.ichidan.test',
      'log: { level: warn }',
      'listeners: [{ name: mx, role: mx, port: 0 }]',
      'trustedNetworks: [127.0.0.1/32]',
      'queue: { retryInitial: 200ms, retryMax: 200ms, retryJitter: 0 }',
      `routes: { "*": { host: 127.0.0.2, port: ${sink.port} } }`,
      '',
    ].join('\n'));
    const logs: string[] = [];
    return { configFile, logs, logFile: new Writable({ write(chunk: Buffer, _enc, cb) { logs.push(chunk.toString()); cb(); } }) };
  }

  it('brings back lost records, lost or short files and lost outcomes after an unclean stop', async () => {
    const { configFile, logs, logFile } = await setUp(dataDir);
    let child = await startChild(configFile, logFile);
    const lostRecord = await send(child.ports.mx, 'later1@far.test', 'lost-record');
    const lostFile = await send(child.ports.mx, 'later2@far.test', 'lost-file');
    const shortFile = await send(child.ports.mx, 'later3@far.test', 'short-file');
    const lostAll = await send(child.ports.mx, 'later4@far.test', 'lost-all');
    const zeroedFile = await send(child.ports.mx, 'later5@far.test', 'zeroed-file');
    // One recipient delivered at once, the other deferred: the message stays in the queue.
    const delivered = await send(child.ports.mx, ['now@far.test', 'later6@far.test'], 'delivered');
    await sink.waitFor(1, 10_000);
    // Its outcome committed (then journaled with the next batch, at most a moment later) before the kill.
    const reader = new Database(join(dataDir, 'queue.db'), { readonly: true });
    const stateOf = (address: string) => (reader.prepare('SELECT state FROM recipients WHERE message_id = ? AND address = ?').get(delivered, address) as { state: string } | undefined)?.state;
    await waitUntil(() => stateOf('now@far.test') === 'delivered', 10_000, 'the outcome');
    await new Promise((r) => setTimeout(r, 500));
    expect(stateOf('later6@far.test')).toBe('queued');
    reader.close();
    child.proc.kill('SIGKILL');
    await child.exited;
    expect((await readdir(join(dataDir, 'journal'))).some((n) => /^\d+\.seg$/.test(n))).toBe(true);

    // What a power cut could take: unsynced rows and files.
    const db = new Database(join(dataDir, 'queue.db'));
    const forget = (id: string) => { db.prepare('DELETE FROM recipients WHERE message_id = ?').run(id); db.prepare('DELETE FROM messages WHERE id = ?').run(id); };
    forget(lostRecord);
    forget(lostAll);
    // The delivered recipient's outcome lost: queued again, as it was before the attempt.
    expect(db.prepare(`UPDATE recipients SET state = 'queued' WHERE message_id = ? AND address = 'now@far.test'`).run(delivered).changes).toBe(1);
    db.close();
    await rm(join(dataDir, 'spool', lostFile));
    await rm(join(dataDir, 'spool', lostAll));
    await truncate(join(dataDir, 'spool', shortFile), 10);
    // Its size written back, its pages not: zeroes where the message was.
    const zeroedPath = join(dataDir, 'spool', zeroedFile);
    await writeFile(zeroedPath, Buffer.alloc((await stat(zeroedPath)).size));

    accepting = true;
    child = await startChild(configFile, logFile);
    try {
      await sink.waitFor(7, 20_000);
      await new Promise((r) => setTimeout(r, 1000));
      const tokens = sink.messages.map((m) => `${/X-Token: ([\w-]+)/.exec(m.data.toString())?.[1]} ${m.rcptTo.join(',')}`).sort();
      // Each once: the delivered recipient is not sent it again (its outcome was in the journal).
      expect(tokens).toEqual(['delivered later6@far.test', 'delivered now@far.test', 'lost-all later4@far.test', 'lost-file later2@far.test',
        'lost-record later1@far.test', 'short-file later3@far.test', 'zeroed-file later5@far.test']);
      for (const m of sink.messages) expect(m.data.toString()).toContain('journal line\r\n'.repeat(40));
      expect(logs.join('')).toMatch(/spool journal replayed after an unclean stop/);
      // Nothing set aside: the journal had every acknowledged message.
      expect(logs.join('')).not.toMatch(/set aside as corrupt/);
      await waitUntil(async () => (await readdir(join(dataDir, 'spool'), { withFileTypes: true })).filter((e) => e.isFile()).length === 0, 10_000, 'the spool to be swept');
    } finally {
      child.proc.kill('SIGTERM');
    }
    expect(await child.exited).toBe(0);
    // A clean stop settles the journal: no segment is left to replay.
    expect((await readdir(join(dataDir, 'journal'))).filter((n) => /^\d+\.seg$/.test(n))).toEqual([]);
  }, 90_000);

  it('after a stop of the machine, checks the database, sets a damaged one aside and brings the journal\'s mail back', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'ichidan-machine-'));
    try {
      const { configFile, logs, logFile } = await setUp(dir);
      accepting = false;
      let child = await startChild(configFile, logFile);
      await send(child.ports.mx, 'later7@far.test', 'machine-1');
      await send(child.ports.mx, 'later8@far.test', 'machine-2');
      child.proc.kill('SIGKILL');
      await child.exited;
      // The marker as another boot left it, and the database's pages overwritten as a torn checkpoint could.
      const marker = join(dir, 'running');
      await writeFile(marker, (await readFile(marker, 'utf8')).replace(/"bootId":"[^"]*"/, '"bootId":"another-boot"'));
      const db = new Database(join(dir, 'queue.db'));
      db.pragma('wal_checkpoint(TRUNCATE)');
      db.close();
      const fh = await open(join(dir, 'queue.db'), 'r+');
      for (let page = 2; page <= 12; page++) await fh.write(Buffer.alloc(64, 0x5a), 0, 64, (page - 1) * 1024);
      await fh.close();

      accepting = true;
      const before = sink.messages.length;
      child = await startChild(configFile, logFile);
      try {
        await waitUntil(() => sink.messages.length >= before + 2, 20_000, 'the journaled messages to be delivered');
        const text = logs.join('');
        expect(text).toMatch(/the machine stopped while the queue was open: checking the queue database/);
        expect(text).toMatch(/queue database damaged: set aside/);
        expect((await readdir(dir)).some((n) => n.startsWith('queue.db.damaged-'))).toBe(true);
        const tokens = sink.messages.slice(before).map((m) => /X-Token: ([\w-]+)/.exec(m.data.toString())?.[1]).sort();
        expect(tokens).toEqual(['machine-1', 'machine-2']);
      } finally {
        child.proc.kill('SIGTERM');
      }
      expect(await child.exited).toBe(0);
      // A clean stop removes the marker: the next start checks nothing.
      expect(existsSync(join(dir, 'running'))).toBe(false);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  }, 90_000);
});
