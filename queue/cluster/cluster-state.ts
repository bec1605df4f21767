/*
 * The operator and control state the nodes share: holds, suspensions, throttle pauses and their
 * undos, engine switches, quarantine releases asked on one node for a message another holds, and
 * the tenants' suppression entries (cluster-suppression.ts).
 *
 * Redis keys (one hash tag, so Redis Cluster keeps them in one slot and the publishing script may
 * touch them all):
 *   <prefix>:{state}:items    hash: the desired state — every item in force, by name
 *                             (`event:<uid>`, `engine:<name>`, `release:<queue id>`,
 *                             `suppress:<tenant>:<address>`) → its change, JSON
 *   <prefix>:{state}:version  counter: one more for every change
 *   <prefix>:{state}:changes  stream of changes (fields v, node, change), trimmed to about STREAM_LENGTH
 *   <prefix>:{state}:epoch    which incarnation of Redis this is ("<ms>-<random>", set by the first node to see it empty)
 * A change is published by one Lua script: the version, the item and the stream entry move together,
 * and only against the incarnation the node last synchronised with.
 *
 * Each node reads the stream with a blocking reader of its own (`link.duplicate()`), applies what
 * other nodes changed (its own changes are already in force: they are skipped, not applied twice),
 * and records the last entry applied (id and version) in its copy (cluster-state-sql.ts). After a
 * restart or a lost connection it replays from that entry; when the stream no longer reaches back
 * that far (the first entry's version is not the next one) it loads the whole desired state and
 * each applier lifts what is no longer in it — except this node's own changes not in Redis yet
 * (made while it syncs), which count as part of it.
 *
 * Redis away: an action is applied locally at once and its change queued in the copy (the outbox);
 * when Redis returns, the outbox is published in order, then the node catches up. A Redis that
 * comes back empty (no persistence) is seeded with what the nodes that reconnect within
 * SEED_WINDOW_MS have in force, and a node that joins for the first time adds what it has.
 * Settings: cluster.redis, cluster.prefix, cluster.node.
 */
import { randomBytes } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Redis } from 'ioredis';
import type { Logger } from 'pino';
import type { NewEgressEvent } from '../queue-records-egress.js';
import type { SuppressionEntry } from '../queue-suppression-sql.js';
import type { ClusterLink } from './cluster-link.js';

/** An egress event as it travels: everything but this node's row number. */
export type SharedEvent = Omit<NewEgressEvent, 'uid' | 'origin'> & { origin: string };

export type StateChange =
  | { type: 'event'; uid: string; event: SharedEvent }
  | { type: 'undo'; uid: string; at: number; by: string }
  | { type: 'engine'; engine: string; off: { reason: string; at: number } | null }
  | { type: 'release'; message: string; at: number; by: string }
  | { type: 'released'; message: string; node: string; recipients: number }
  /** A tenant's suppression entry for an address (null: removed). */
  | { type: 'suppress'; tenant: string; address: string; entry: SuppressionEntry | null };

/** Where a node is in the stream, and which Redis incarnation that refers to. */
export interface Position {
  lastId: string;
  version: number;
  epoch: string | null;
}

/** The node's own copy (SQLite in the daemon). */
export interface StateCopy {
  position(): Position | null;
  savePosition(position: Position): Promise<void>;
  outbox(): Array<{ seq: number; change: StateChange }>;
  queue(change: StateChange): Promise<void>;
  sent(seq: number): Promise<void>;
}

/** What puts one kind of change in force on this node (egress control, engines, the queue). */
export interface StateApplier {
  /** A change another node made. */
  apply(change: StateChange): Promise<void>;
  /** The whole desired state after a gap: put in force what is missing, lift what is not listed. */
  reload(items: StateChange[]): Promise<void>;
  /** What this node has in force, to seed a Redis that lost the state. */
  inForce(): StateChange[];
}

/** The stream is trimmed to about this many changes; a node further behind reloads the whole state. */
export const STREAM_LENGTH = 10_000;
/** A release nobody could act on is forgotten after a day. */
const RELEASE_TTL_MS = 86_400_000;
/** Nodes reconnecting this soon after Redis came back empty put their state back into it. */
const SEED_WINDOW_MS = 30_000;
const BATCH = 500;
/** Items that lapsed (a pause's end, a release's day) are removed from the desired state this often. */
const PRUNE_EVERY_MS = 600_000;

const PUBLISH = `
if redis.call('GET', KEYS[4]) ~= ARGV[1] then return false end
local v = redis.call('INCR', KEYS[2])
if ARGV[4] == 'set' then redis.call('HSET', KEYS[1], ARGV[3], ARGV[5]) elseif ARGV[4] == 'del' then redis.call('HDEL', KEYS[1], ARGV[3]) end
return redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[6], '*', 'v', v, 'node', ARGV[2], 'change', ARGV[5])
`;

/** The desired-state item a change sets or deletes. */
export function itemOf(change: StateChange): { field: string; op: 'set' | 'del' } {
  switch (change.type) {
    case 'event': return { field: `event:${change.uid}`, op: 'set' };
    case 'undo': return { field: `event:${change.uid}`, op: 'del' };
    case 'engine': return { field: `engine:${change.engine}`, op: change.off ? 'set' : 'del' };
    case 'release': return { field: `release:${change.message}`, op: 'set' };
    case 'released': return { field: `release:${change.message}`, op: 'del' };
    case 'suppress': return { field: `suppress:${change.tenant}:${change.address}`, op: change.entry ? 'set' : 'del' };
  }
}

/** When an item of the desired state lapses by itself (null: never). */
export function expiresAt(change: StateChange): number | null {
  if (change.type === 'event') return change.event.until;
  if (change.type === 'release') return change.at + RELEASE_TTL_MS;
  if (change.type === 'suppress') return change.entry?.expires_at ?? null;
  return null;
}

type Entry = [id: string, fields: string[]];

export class ClusterState extends EventEmitter {
  readonly #reader: Redis;
  /** Changes being published now, by item: neither in Redis nor in the outbox yet. */
  readonly #publishing = new Map<string, StateChange>();
  readonly #appliers: StateApplier[] = [];
  #position: Position;
  /** The Redis incarnation publishes go to: the position's, or the new one while a sync moves to it. */
  #epoch: string | null;
  #synced = false;
  #closed = false;
  #outboxed: number;
  #running: Promise<void> | null = null;
  #flushing: Promise<void> | null = null;
  #prunedAt = Date.now();
  /** Changes this node published and applied from others (for the metrics and the tests). */
  published = 0;
  applied = 0;
  reloads = 0;

  constructor(private readonly link: ClusterLink, private readonly copy: StateCopy, private readonly log: Logger, private readonly streamLength = STREAM_LENGTH) {
    super();
    this.#reader = link.duplicate();
    this.#position = copy.position() ?? { lastId: '0-0', version: 0, epoch: null };
    this.#epoch = this.#position.epoch;
    this.#outboxed = copy.outbox().length;
    link.on('up', () => { this.#synced = false; });
  }

  get node(): string {
    return this.link.node;
  }

  /** In step with Redis: caught up since the last (re)connection. */
  get synced(): boolean {
    return this.#synced;
  }

  /** Changes waiting for Redis. */
  get outboxed(): number {
    return this.#outboxed;
  }

  get position(): Position {
    return { ...this.#position };
  }

  use(applier: StateApplier): void {
    this.#appliers.push(applier);
  }

  start(): void {
    this.#running ??= this.#run();
  }

  async close(): Promise<void> {
    this.#closed = true;
    this.#reader.disconnect();
    await this.#running;
  }

  /**
   * Shares a change this node has already put in force. Resolves true once it is in Redis, false
   * when Redis is away: then it waits in the outbox and is published when Redis returns.
   */
  async publish(change: StateChange): Promise<boolean> {
    // Until it is in Redis or in the outbox, a reload running meanwhile must still count it (#reload).
    const { field } = itemOf(change);
    this.#publishing.set(field, change);
    try {
      return await this.#publish(change);
    } finally {
      if (this.#publishing.get(field) === change) this.#publishing.delete(field);
    }
  }

  async #publish(change: StateChange): Promise<boolean> {
    if (this.#outboxed === 0 && this.#synced && (await this.#send(change))) return true;
    try {
      await this.copy.queue(change);
    } catch (err) {
      this.log.error({ err, change: change.type }, 'cluster: a change could not be kept for Redis; it is in force on this node only');
      return false;
    }
    this.#outboxed++;
    if (this.#synced) await this.#flush();
    if (this.#outboxed === 0) return true;
    if (!this.link.up) this.log.warn({ change: change.type, waiting: this.#outboxed }, 'cluster: Redis is away; the change is in force here and is shared when Redis returns');
    return false;
  }

  /** Resolves with the first change (from any node) that `match` accepts within `ms`, else undefined. */
  waitFor(match: (change: StateChange, node: string) => boolean, ms: number): Promise<StateChange | undefined> {
    return new Promise((resolve) => {
      const listener = (change: StateChange, node: string) => {
        if (!match(change, node)) return;
        done(change);
      };
      const timer = setTimeout(() => done(undefined), ms);
      const done = (change: StateChange | undefined) => {
        clearTimeout(timer);
        this.off('change', listener);
        resolve(change);
      };
      this.on('change', listener);
    });
  }

  #key(name: string): string {
    return this.link.key('{state}', name);
  }

  async #send(change: StateChange): Promise<boolean> {
    const { field, op } = itemOf(change);
    const id = await this.link.call(1, (r) => r.eval(PUBLISH, 4, this.#key('items'), this.#key('version'), this.#key('changes'), this.#key('epoch'),
      this.#epoch ?? '', this.link.node, field, op, JSON.stringify(change), this.streamLength));
    if (typeof id !== 'string') return false;
    this.published++;
    return true;
  }

  async #run(): Promise<void> {
    this.#reader.connect().catch(() => undefined);
    while (!this.#closed) {
      if (this.#reader.status !== 'ready' || !this.link.up) {
        this.#synced = false;
        await sleep(50);
        continue;
      }
      try {
        if (!this.#synced) {
          await this.#sync();
          this.#synced = true;
          this.emit('synced');
        }
        if (this.#outboxed > 0) await this.#flush();
        if (Date.now() - this.#prunedAt >= PRUNE_EVERY_MS) await this.#prune();
        const res = (await this.#reader.xread('COUNT', BATCH, 'BLOCK', 1000, 'STREAMS', this.#key('changes'), this.#position.lastId)) as Array<[string, Entry[]]> | null;
        if (res) await this.#applyEntries(res[0][1]);
      } catch (err) {
        if (this.#closed) break;
        this.#synced = false;
        const level = this.#reader.status === 'ready' ? 'warn' : 'debug';
        this.log[level]({ err: (err as Error).message }, 'cluster: the shared state could not be read or applied; catching up again');
        await sleep(100);
      }
    }
  }

  /** After a (re)connection: the incarnation, the outbox, then the changes missed or the whole state. */
  async #sync(): Promise<void> {
    const r = this.#reader;
    const [sec, micro] = await r.time();
    const now = Number(sec) * 1000 + Math.floor(Number(micro) / 1000);
    await r.set(this.#key('epoch'), `${now}-${randomBytes(6).toString('hex')}`, 'NX');
    const epoch = (await r.get(this.#key('epoch')))!;
    this.#epoch = epoch;
    // The position is moved to a new incarnation only by the reload that ends this: a sync cut short starts over here.
    if (epoch !== this.#position.epoch) {
      const known = this.#position.epoch;
      await this.#flush();
      if (this.#outboxed > 0) throw new Error('the changes made while Redis was away could not all be published');
      const bornAt = Number(epoch.split('-')[0]);
      if (known === null || now - bornAt <= SEED_WINDOW_MS) await this.#seed();
      await this.#reload();
      return;
    }
    await this.#flush();
    if (this.#outboxed > 0) throw new Error('the changes made while Redis was away could not all be published');
    let first = true;
    for (;;) {
      const entries = (await r.xrange(this.#key('changes'), `(${this.#position.lastId}`, '+', 'COUNT', BATCH)) as Entry[];
      if (first && entries.length === 0 && Number((await r.get(this.#key('version'))) ?? 0) !== this.#position.version) {
        await this.#reload();
        return;
      }
      first = false;
      if (!(await this.#applyEntries(entries))) return;
      if (entries.length < BATCH) return;
    }
  }

  /** Applies stream entries in order; on a gap, reloads the whole state instead. Resolves false after a reload. */
  async #applyEntries(entries: Entry[]): Promise<boolean> {
    if (entries.length === 0) return true;
    for (const [id, fields] of entries) {
      const f = fieldsOf(fields);
      const v = Number(f.v);
      if (v <= this.#position.version) {
        this.#position = { ...this.#position, lastId: id };
        continue;
      }
      if (v !== this.#position.version + 1) {
        this.log.info({ have: this.#position.version, next: v }, 'cluster: the changes missed are no longer in the stream; loading the whole shared state');
        await this.#reload();
        return false;
      }
      const change = JSON.parse(f.change) as StateChange;
      if (f.node !== this.link.node) {
        for (const a of this.#appliers) await a.apply(change);
        this.applied++;
      }
      this.#position = { ...this.#position, lastId: id, version: v };
      this.emit('change', change, f.node);
    }
    await this.copy.savePosition(this.#position);
    return true;
  }

  async #reload(): Promise<void> {
    const res = await this.#reader.multi()
      .hgetall(this.#key('items'))
      .get(this.#key('version'))
      .xrevrange(this.#key('changes'), '+', '-', 'COUNT', 1)
      .exec();
    const [[, items], [, version], [, last]] = res as [[null, Record<string, string>], [null, string | null], [null, Entry[]]];
    const changes = await this.#dropLapsed(items);
    for (const a of this.#appliers) await a.reload(this.#withOwn(changes));
    this.#position = { lastId: last[0]?.[0] ?? '0-0', version: Number(version ?? 0), epoch: this.#epoch };
    await this.copy.savePosition(this.#position);
    this.reloads++;
    this.log.info({ items: changes.length, version: this.#position.version }, 'cluster: shared state loaded');
  }

  /**
   * The desired state with this node's own changes that are not in Redis yet (an action taken while
   * the node syncs: in the outbox, or on its way there) laid over it, worked out just before an
   * applier's reload, so that the reload does not lift them as gone elsewhere.
   */
  #withOwn(changes: StateChange[]): StateChange[] {
    const byField = new Map(changes.map((c) => [itemOf(c).field, c]));
    const now = Date.now();
    for (const change of [...this.copy.outbox().map((o) => o.change), ...this.#publishing.values()]) {
      const { field, op } = itemOf(change);
      const end = expiresAt(change);
      if (op === 'set' && (end === null || end > now)) byField.set(field, change);
      else byField.delete(field);
    }
    return [...byField.values()];
  }

  /** Removes the items that lapsed from the desired state (every node does it now and then; it is idempotent). */
  async #prune(): Promise<void> {
    this.#prunedAt = Date.now();
    await this.#dropLapsed(await this.#reader.hgetall(this.#key('items')));
  }

  /** The items still in force; the lapsed ones are removed from Redis. */
  async #dropLapsed(items: Record<string, string>): Promise<StateChange[]> {
    const now = Date.now();
    const changes: StateChange[] = [];
    const lapsed: string[] = [];
    for (const [field, json] of Object.entries(items)) {
      const change = JSON.parse(json) as StateChange;
      const end = expiresAt(change);
      if (end !== null && end <= now) lapsed.push(field);
      else changes.push(change);
    }
    if (lapsed.length > 0) await this.#reader.hdel(this.#key('items'), ...lapsed);
    return changes;
  }

  /** Publishes the changes made while Redis was away, in order (one flush at a time); stops at the first that fails. */
  #flush(): Promise<void> {
    const run = async () => {
      for (const { seq, change } of this.copy.outbox()) {
        if (!(await this.#send(change))) return;
        await this.copy.sent(seq);
      }
    };
    this.#flushing ??= run().finally(() => {
      this.#flushing = null;
      this.#outboxed = this.copy.outbox().length;
    });
    return this.#flushing;
  }

  /** Puts what this node has in force into a Redis that lost it (or that this node joins for the first time). */
  async #seed(): Promise<void> {
    const items = await this.#reader.hkeys(this.#key('items'));
    const have = new Set(items);
    let n = 0;
    for (const a of this.#appliers) {
      for (const change of a.inForce()) {
        if (have.has(itemOf(change).field)) continue;
        if (await this.#send(change)) n++;
      }
    }
    if (n > 0) this.log.info({ items: n }, 'cluster: what this node had in force is shared again');
  }
}

function fieldsOf(list: string[]): Record<string, string> {
  const out: Record<string, string> = {};
  for (let i = 0; i + 1 < list.length; i += 2) out[list[i]] = list[i + 1];
  return out;
}
