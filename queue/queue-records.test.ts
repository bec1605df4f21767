import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import type { TranscriptChunk } from '../delivery/index.js';
import type { ScanRecord } from '../engines/engines-records.js';
import { readEngineEvents, readEngineStats, readScan } from './queue-records-sql.js';
import { readConnections } from './queue-records-transcripts.js';
import { QueueRecords } from './queue-records.js';
import { QueueStore } from './queue-store.js';

const log = pino({ level: 'silent' });
const open: Array<{ store: QueueStore; dir: string }> = [];
afterEach(async () => {
  for (const { store, dir } of open.splice(0)) {
    await store.close();
    await rm(dir, { recursive: true, force: true });
  }
});

async function setup(retention = { scans: 60_000, transcripts: 60_000 }) {
  const dir = await mkdtemp(join(tmpdir(), 'ichidan-records-'));
  const store = new QueueStore(join(dir, 'queue.db'), false);
  open.push({ store, dir });
  return { store, records: new QueueRecords(store, log, () => retention) };
}

const scan = (queueId: string, at: number): ScanRecord => ({
  queueId, at, action: 'reject', reason: 'virus', tenants: ['a'], ms: 3, overheadMs: 1, generation: 1,
  runs: [{ engine: 'clam', kind: 'av', shadow: false, status: 'infected', signature: 'Eicar', version: '1', ms: 3 }],
});

const chunk = (id: string, at: number): TranscriptChunk => ({
  connection: {
    id, startedAt: at, endedAt: at, host: 'mx.test', protocol: 'smtp', address: '192.0.2.9', port: 25, localAddress: null, localPort: null,
    tls: null, helo: 'me.test', tenant: 'a', messages: 0, commands: 1, lines: 1, bytesStored: 6, truncated: false, ended: 'quit',
  },
  messages: [],
  lines: [{ seq: 1, at, dir: 'server', queueId: null, text: '220 hi' }],
});

describe('records store', () => {
  it('records a refused message\'s scan and counts it in the engine statistics written at the next tick', async () => {
    const { store, records } = await setup();
    const now = Date.now();
    records.recordScan(scan('R1', now));
    await store.write([]);
    expect(readScan(store.db, 'R1')).toMatchObject({ queue_id: 'R1', action: 'reject', reason: 'virus' });
    expect(readEngineStats(store.db, '2000-01-01')).toEqual([]);
    await records.tick(now + 10_000);
    expect(readEngineStats(store.db, '2000-01-01')).toMatchObject([{ engine: 'clam', scanned: 1, detected: 1 }]);
  });

  it('writes the session transcripts still waiting for their batch at close', async () => {
    const { store, records } = await setup();
    records.recordTranscript(chunk('C1', Date.now()));
    records.recordTranscript(chunk('C2', Date.now()));
    await records.close();
    await store.write([]);
    expect(readConnections(store.db, { last: 10 }).map((c) => c.id).sort()).toEqual(['C1', 'C2']);
  });

  it('prunes scan records and transcripts past their retention at the hourly tick', async () => {
    const { store, records } = await setup({ scans: 1000, transcripts: 2000 });
    const now = Date.now();
    records.recordScan(scan('OLD', now - 1500));
    records.recordScan(scan('NEW', now - 500));
    records.recordTranscript(chunk('C-OLD', now - 2500));
    records.recordTranscript(chunk('C-NEW', now - 1500));
    await records.close();
    await records.tick(now);
    expect(readScan(store.db, 'OLD')).toBeUndefined();
    expect(readScan(store.db, 'NEW')).toBeDefined();
    expect(readConnections(store.db, { last: 10 }).map((c) => c.id)).toEqual(['C-NEW']);
  });

  it('keeps an operator\'s engine switch across a restart, and lists the events', async () => {
    const { store, records } = await setup();
    records.recordEngineEvent({ at: 1, engine: 'clam', event: 'disabled', reason: 'maintenance' });
    await store.write([]);
    expect(records.engineSwitches()).toEqual(new Map([['clam', { reason: 'maintenance', at: 1 }]]));
    records.recordEngineEvent({ at: 2, engine: 'clam', event: 'enabled', reason: 'back' });
    await store.write([]);
    expect(records.engineSwitches()).toEqual(new Map());
    expect(readEngineEvents(store.db, 10).map((e) => e.event)).toEqual(['enabled', 'disabled']);
  });

  it('records egress events and undoes one only once', async () => {
    const { records } = await setup();
    const id = await records.recordEgressEvent({
      at: 1, kind: 'hold', actor: 'operator', tenant: 'a', site: null, source: null, until: null, reason: 'r', detail: null, block_id: 'b1',
    });
    expect(records.egressEvents({ limit: 10, open: true, now: 2 }).map((e) => e.id)).toEqual([id]);
    expect(await records.undoEgressEvent(id, 3, 'op')).toMatchObject({ id, undone_at: 3, undone_by: 'op' });
    expect(await records.undoEgressEvent(id, 4, 'op')).toBeNull();
    expect(records.egressEvents({ limit: 10, open: true, now: 5 })).toEqual([]);
    expect(records.egressEvent(id)).toMatchObject({ kind: 'hold', undone_at: 3 });
  });
});
