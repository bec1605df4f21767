/*
 * Reading outbound session transcripts (written by the queue store's writer from the `connections`,
 * `connection_messages` and `commands` tables, see queue-store-sql.ts) for `ichidan sessions`.
 */
import type Database from 'better-sqlite3';

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

/** One session: its row, the messages it carried, and its stored lines in order. */
export function readConnection(db: Database.Database, id: string): { connection: ConnectionRow; messages: ConnectionMessageRow[]; commands: CommandRow[] } | undefined {
  const connection = db.prepare(`SELECT * FROM connections WHERE id = ?`).get(id) as ConnectionRow | undefined;
  if (!connection) return undefined;
  return {
    connection,
    messages: db.prepare(`SELECT n, at, queue_id, tenant, recipients FROM connection_messages WHERE connection_id = ? ORDER BY n`).all(id) as ConnectionMessageRow[],
    commands: db.prepare(`SELECT seq, at, dir, queue_id, text FROM commands WHERE connection_id = ? ORDER BY seq`).all(id) as CommandRow[],
  };
}
