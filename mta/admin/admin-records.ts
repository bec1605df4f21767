/*
 * The admin API's read-only records: what the CLI reads from the queue database directly, served
 * to the dashboard (which cannot open the database) by the running process.
 *
 *   GET /v1/quarantine                     quarantined messages (as `ichidan quarantine list`)
 *   GET /v1/quarantine/ID                  one of them: envelope, its header fields, and a text
 *                                          preview — the stored message's first PREVIEW_BYTES as
 *                                          text (never rendered; the dashboard shows it as text)
 *   GET /v1/engines/events?last=N          breaker transitions and switches (as `ichidan engines events`)
 *   GET /v1/engines/stats?days=N           per engine and day (as `ichidan engines stats`), p50/p99 in ms
 *   GET /v1/transcripts/ID                 one stored session: its row, messages and lines
 * Takes: the queue's database (its main-thread read connection), its spool, and the readers the
 * CLI uses (queue/queue-store-sql.ts, queue/queue-records-sql.ts, queue/queue-records-transcripts.ts),
 * and the header parsing of `ichidan queue show` (queue/queue-inspect.ts).
 */
import type { Queue } from '../../queue/index.js';
import { readEngineEvents, readEngineStats } from '../../queue/queue-records-sql.js';
import { readConnection } from '../../queue/queue-records-transcripts.js';
import { parseHeaders } from '../../queue/queue-inspect.js';
import { readQuarantine } from '../../queue/queue-store-sql.js';
import { percentile } from '../../engines/engines-records.js';
import { BadRequest, type AdminRoute } from './admin-request.js';

const PREVIEW_BYTES = 32 * 1024;
const QUARANTINED = /^\/v1\/quarantine\/([0-9A-Za-z]{1,64})$/;
const TRANSCRIPT = /^\/v1\/transcripts\/([0-9A-Za-z_.:-]{1,128})$/;

export interface RecordsTarget {
  readonly queue: Pick<Queue, 'store' | 'spool'>;
}

function count(query: URLSearchParams, key: string, fallback: number, max: number): number {
  const n = Number(query.get(key) ?? fallback);
  if (!Number.isInteger(n) || n < 1 || n > max) throw new BadRequest(`"${key}" must be a number from 1 to ${max}`);
  return n;
}

async function head(stream: AsyncIterable<Buffer>, max: number): Promise<{ bytes: Buffer; more: boolean }> {
  const parts: Buffer[] = [];
  let size = 0;
  for await (const chunk of stream) {
    parts.push(chunk);
    size += chunk.length;
    if (size > max) break;
  }
  const all = Buffer.concat(parts);
  return { bytes: all.subarray(0, max), more: all.length > max };
}

/** The header section of a message's text: up to the first empty line. */
function headerSection(text: string): string {
  const end = text.search(/\r?\n\r?\n/);
  return end < 0 ? text : text.slice(0, end);
}

async function quarantined(id: string, { queue }: RecordsTarget): Promise<[number, unknown]> {
  const msg = queue.store.message(id);
  if (!msg || msg.quarantine === null || msg.state !== 'active') return [404, { error: `no quarantined message ${id}` }];
  const recipients = queue.store.recipientsOf(id).map((r) => ({ address: r.address, tenant: r.tenant, state: r.state }));
  let stored: { bytes: Buffer; more: boolean };
  try {
    stored = await head(queue.spool.read(id), PREVIEW_BYTES);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [404, { error: `message ${id} has no spool file` }];
    throw err;
  }
  const { bytes, more } = stored;
  // Control characters other than line ends and tabs are shown as "?": the text is looked at, never run.
  const text = (msg.trace + bytes.toString('utf8')).replace(/[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]/g, '?');
  return [200, {
    id, sender: msg.sender, receivedAt: msg.received_at, size: msg.size, quarantine: msg.quarantine, client: msg.client, helo: msg.helo,
    recipients, headers: parseHeaders(headerSection(text)), preview: text, truncated: more,
  }];
}

export const recordsRoute: AdminRoute<RecordsTarget> = async ({ method, path, query }, target) => {
  if (method !== 'GET') return null;
  const db = target.queue.store.db;
  if (path === '/v1/quarantine') return [200, { messages: readQuarantine(db) }];
  const q = QUARANTINED.exec(path);
  if (q) return quarantined(q[1], target);
  if (path === '/v1/engines/events') return [200, { events: readEngineEvents(db, count(query, 'last', 100, 10_000)) }];
  if (path === '/v1/engines/stats') {
    const days = count(query, 'days', 7, 366);
    const since = new Date(Date.now() - (days - 1) * 86_400_000).toISOString().slice(0, 10);
    const rows = readEngineStats(db, since).map(({ histogram, ...r }) => ({ ...r, p50: percentile(histogram, 0.5), p99: percentile(histogram, 0.99) }));
    return [200, { days, rows }];
  }
  const t = TRANSCRIPT.exec(path);
  if (t) {
    const session = readConnection(db, t[1]);
    return session ? [200, session] : [404, { error: `no stored session ${t[1]}` }];
  }
  return null;
};
