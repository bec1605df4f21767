/*
 * Known senders shared across a cluster through its Redis (queue/cluster/cluster-link.ts): what
 * one node learns, and every pin, block and forget, reaches the others within a few flushes.
 *
 * Redis keys:
 *   <prefix>:senders:of:<node>  hash, one per node: "<kind>|<key>" → that node's own tally (JSON)
 *   <prefix>:senders:nodes      set: the nodes that have a hash
 *   <prefix>:senders:marks      hash: "<kind>|<key>" → {mark} (pinned/blocked) or {forgotten, by} (a forget, kept forgetAfter)
 *   <prefix>:senders:changes    stream (about `streamLength` entries): fields node, body — tallies a
 *                               node pushed, or a mark / forget
 *   <prefix>:senders:epoch      which incarnation of Redis this is (set by the first node to see it empty)
 * No double counting: a node writes only its own tally of a sender, whole, under its own name;
 * the others keep each node's tally apart and add them up (admission-senders-tally.ts). Writing it
 * again replaces it, so a push repeated after an outage counts nothing twice.
 *
 * Every flush (admission.senders.flushEvery) a synchronised node pushes its changed tallies (hash
 * and stream), then reads the stream from where it was and applies the other nodes' entries.
 * Synchronising (at start, after Redis was away, after a gap in the stream): publish the operator
 * changes made meanwhile (the outbox), take the stream's position, load all marks (the desired
 * state: marks not in it are lifted, forgets applied), load every other node's hash, and push all
 * own tallies changed since the last push — all of them when Redis is a new incarnation (restarted
 * empty, or joined for the first time), which also seeds it with this node's marks, and when more
 * than `maxUnshared` changed while it was away (a flood of new senders: the node's hash is then
 * written anew, without the entries it dropped meanwhile, after a `reset` in the stream that has
 * the others drop what they had from it).
 * Redis away: the node goes on with what it has (its own SQLite, admission-senders-sql.ts); pins,
 * blocks and forgets wait in the outbox; all of it is shared when Redis returns (an operator change
 * kept in an outbox then wins over one made on the same entry meanwhile: the later to reach Redis).
 * A sync also removes from the other nodes' hashes the tallies not seen for forgetAfter, so a node
 * that left the cluster leaves nothing behind for ever.
 * Settings: cluster.* (the link), admission.senders.flushEvery, forgetAfter.
 */
import { randomBytes } from 'node:crypto';
import type { Redis } from 'ioredis';
import type { Logger } from 'pino';
import type { ClusterLink } from '../../queue/cluster/cluster-link.js';
import type { SendersDb } from './admission-senders-sql.js';
import type { SenderKind, SenderRef } from './admission-senders-key.js';
import { markOf, tallyOf, type Mark, type Tally } from './admission-senders-tally.js';

const ROWS_PER_ENTRY = 500;
const READ_BATCH = 500;

export interface ShareLimits {
  /** The stream is trimmed to about this many entries; a node further behind loads everything again. */
  streamLength: number;
  /** Changes kept for the next push while Redis is away; past this the node's whole hash is written again instead. */
  maxUnshared: number;
}

export const SHARE_LIMITS: ShareLimits = { streamLength: 2000, maxUnshared: 100_000 };

/** What travels in the stream. */
export type SendersChange =
  | { t: 'tallies'; rows: Array<[kind: SenderKind, key: string, tally: Tally | null]> }
  | { t: 'mark'; kind: SenderKind; key: string; mark: Mark }
  | { t: 'forget'; kind: SenderKind; key: string; at: number; by: string }
  /** The node's hash is written anew: drop all that was had from it (its tallies follow). */
  | { t: 'reset' };

/** What the shared state is applied to and read from (KnownSenders). */
export interface ShareHost {
  ownTally(ref: SenderRef): Tally | null;
  allOwn(): Array<SenderRef & { tally: Tally }>;
  localMarks(): Array<SenderRef & { mark: Mark }>;
  /** A peer's tallies (null: it no longer counts that sender). */
  peerTallies(node: string, rows: Array<SenderRef & { tally: Tally | null }>): void;
  /** Everything had from one peer goes (it writes all it has again). */
  dropPeer(node: string): void;
  /** Every peer's tallies, replacing all that was had from peers. */
  replacePeers(rows: Array<SenderRef & { node: string; tally: Tally }>): void;
  applyMark(ref: SenderRef, mark: Mark): void;
  applyForget(ref: SenderRef, at: number): void;
  /** The whole desired state of marks: lift every mark not in it. */
  replaceMarks(marks: Array<SenderRef & { mark: Mark }>, forgets: Array<SenderRef & { at: number }>): void;
}

const field = (ref: SenderRef) => `${ref.kind}|${ref.key}`;

function refOf(f: string): SenderRef | null {
  const bar = f.indexOf('|');
  const kind = f.slice(0, bar) as SenderKind;
  if (bar < 0 || !['network', 'user', 'domain', 'resolver'].includes(kind)) return null;
  return { kind, key: f.slice(bar + 1) };
}

/** Stream ids "ms-seq" in order. */
function idAfter(a: string, b: string): boolean {
  const [am, as] = a.split('-').map(Number);
  const [bm, bs] = b.split('-').map(Number);
  return am > bm || (am === bm && as > bs);
}

export class SendersShare {
  #synced = false;
  #lastId = '0-0';
  /** How many entries the stream had been given up to the last one read (Redis 7's entries-added); null before Redis 7. */
  #seen: number | null = null;
  /** Own tallies changed since they were last pushed (entry fields; a removed one pushes null). */
  readonly #unshared = new Set<string>();
  /** Too much changed while Redis was away: the next sync replaces this node's hash with all it has. */
  #rewrite = false;
  #busy: Promise<void> | null = null;
  /** Stream entries of other nodes applied, and own pushes (for tests and logs). */
  applied = 0;
  pushed = 0;

  constructor(private readonly link: ClusterLink, private readonly db: SendersDb, private readonly host: ShareHost,
    private readonly forgetAfter: () => number, private readonly log: Logger, private readonly limits: ShareLimits = SHARE_LIMITS) {
    link.on('up', () => { this.#synced = false; });
    link.on('down', () => { this.#synced = false; });
  }

  get synced(): boolean {
    return this.#synced;
  }

  /** This node's tally of `ref` changed (or was removed): it is pushed at the next flush. */
  changed(ref: SenderRef): void {
    if (this.#rewrite) return;
    this.#unshared.add(field(ref));
    if (this.#unshared.size > this.limits.maxUnshared) {
      this.#unshared.clear();
      this.#rewrite = true;
      this.#synced = false;
    }
  }

  /** One round: synchronise if needed, push, read. Never throws; Redis trouble leaves it for the next round. */
  flush(): Promise<void> {
    this.#busy ??= this.#round().catch((err: Error) => {
      this.#synced = false;
      this.log.debug({ err: err.message }, 'known senders: sharing through Redis failed; trying again at the next flush');
    }).finally(() => { this.#busy = null; });
    return this.#busy;
  }

  /** Shares an operator change now when Redis is there; else it waits in the outbox. Resolves whether it was shared. */
  async publish(change: SendersChange & { t: 'mark' | 'forget' }): Promise<boolean> {
    if (this.#synced && this.db.outbox().length === 0 && (await this.link.call(1, (r) => this.#send(r, change)))) return true;
    this.db.queue(JSON.stringify(change));
    return false;
  }

  #key(...parts: string[]): string {
    return this.link.key('senders', ...parts);
  }

  async #round(): Promise<void> {
    if (!this.link.up) {
      this.#synced = false;
      return;
    }
    if (!this.#synced) {
      const ok = await this.link.call(1, (r) => this.#sync(r));
      if (!ok) return;
      this.#synced = true;
    }
    await this.link.call(1, async (r) => {
      await this.#push(r, [...this.#unshared]);
      await this.#read(r);
    });
  }

  async #send(r: Redis, change: SendersChange & { t: 'mark' | 'forget' }): Promise<boolean> {
    const f = field(change);
    const tx = r.multi();
    if (change.t === 'mark') tx.hset(this.#key('marks'), f, JSON.stringify({ mark: change.mark }));
    else {
      tx.hset(this.#key('marks'), f, JSON.stringify({ forgotten: change.at, by: change.by }));
      // Every node's count of it goes at once, so no node loads it back before it applied the forget.
      for (const node of await r.smembers(this.#key('nodes'))) tx.hdel(this.#key('of', node), f);
    }
    tx.xadd(this.#key('changes'), 'MAXLEN', '~', this.limits.streamLength, '*', 'node', this.link.node, 'body', JSON.stringify(change));
    await tx.exec();
    return true;
  }

  async #sync(r: Redis): Promise<boolean> {
    await r.set(this.#key('epoch'), `${Date.now()}-${randomBytes(6).toString('hex')}`, 'NX');
    const epoch = await r.get(this.#key('epoch'));
    const fresh = epoch !== this.db.meta('epoch');
    for (const { seq, change } of this.db.outbox()) {
      await this.#send(r, JSON.parse(change) as SendersChange & { t: 'mark' | 'forget' });
      this.db.sent(seq);
    }
    if (fresh) {
      const seed = r.pipeline();
      for (const m of this.host.localMarks()) seed.hsetnx(this.#key('marks'), field(m), JSON.stringify({ mark: m.mark }));
      await seed.exec();
    }
    const [[, last], [noStream, info]] = (await r.multi().xrevrange(this.#key('changes'), '+', '-', 'COUNT', 1).xinfo('STREAM', this.#key('changes')).exec()) as
      [[null, Array<[string, string[]]>], [Error | null, unknown[]]];
    this.#lastId = last[0]?.[0] ?? '0-0';
    this.#seen = noStream ? 0 : streamInfo(info).added;
    await this.#loadMarks(r);
    await this.#loadPeers(r);
    const all = fresh || this.#rewrite;
    if (this.#rewrite) {
      await r.multi().del(this.#key('of', this.link.node))
        .xadd(this.#key('changes'), 'MAXLEN', '~', this.limits.streamLength, '*', 'node', this.link.node, 'body', JSON.stringify({ t: 'reset' }))
        .exec();
    }
    const own = all ? this.host.allOwn().map(field) : [];
    await this.#push(r, [...new Set([...own, ...this.#unshared])]);
    this.#rewrite = false;
    this.db.setMeta('epoch', epoch ?? '');
    this.log.info({ node: this.link.node, fresh }, 'known senders: in step with the cluster');
    return true;
  }

  async #loadMarks(r: Redis): Promise<void> {
    const items = await r.hgetall(this.#key('marks'));
    const marks: Array<SenderRef & { mark: Mark }> = [];
    const forgets: Array<SenderRef & { at: number }> = [];
    const lapsed: string[] = [];
    const oldest = Date.now() - this.forgetAfter();
    for (const [f, json] of Object.entries(items)) {
      const ref = refOf(f);
      let value: Record<string, unknown> = {};
      try {
        value = JSON.parse(json) as Record<string, unknown>;
      } catch { /* skipped below */ }
      const mark = markOf(value.mark);
      if (ref && mark) marks.push({ ...ref, mark });
      else if (ref && typeof value.forgotten === 'number' && value.forgotten >= oldest) forgets.push({ ...ref, at: value.forgotten });
      else lapsed.push(f);
    }
    if (lapsed.length > 0) await r.hdel(this.#key('marks'), ...lapsed);
    this.host.replaceMarks(marks, forgets);
  }

  /** Every other node's hash; tallies not seen for forgetAfter (a node that left keeps none for ever) and unreadable ones are removed from it. */
  async #loadPeers(r: Redis): Promise<void> {
    const rows: Array<SenderRef & { node: string; tally: Tally }> = [];
    const oldest = Date.now() - this.forgetAfter();
    for (const node of await r.smembers(this.#key('nodes'))) {
      if (node === this.link.node) continue;
      const stale: string[] = [];
      let cursor = '0';
      do {
        const [next, flat] = await r.hscan(this.#key('of', node), cursor, 'COUNT', 1000);
        cursor = next;
        for (let i = 0; i + 1 < flat.length; i += 2) {
          const ref = refOf(flat[i]);
          const tally = ref && parseTally(flat[i + 1]);
          if (ref && tally && tally.lastSeen >= oldest) rows.push({ ...ref, node, tally });
          else stale.push(flat[i]);
        }
      } while (cursor !== '0');
      if (stale.length > 0) await r.hdel(this.#key('of', node), ...stale);
      if (stale.length > 0 && (await r.hlen(this.#key('of', node))) === 0) await r.srem(this.#key('nodes'), node);
    }
    this.host.replacePeers(rows);
  }

  /** Writes these own tallies (or their removal) to this node's hash and to the stream. */
  async #push(r: Redis, fields: string[]): Promise<void> {
    if (fields.length === 0) return;
    for (let i = 0; i < fields.length; i += ROWS_PER_ENTRY) {
      const chunk = fields.slice(i, i + ROWS_PER_ENTRY);
      const rows: Array<[SenderKind, string, Tally | null]> = [];
      const tx = r.multi().sadd(this.#key('nodes'), this.link.node);
      for (const f of chunk) {
        const ref = refOf(f);
        if (!ref) continue;
        const tally = this.host.ownTally(ref);
        rows.push([ref.kind, ref.key, tally]);
        if (tally) tx.hset(this.#key('of', this.link.node), f, JSON.stringify(tally));
        else tx.hdel(this.#key('of', this.link.node), f);
      }
      tx.xadd(this.#key('changes'), 'MAXLEN', '~', this.limits.streamLength, '*', 'node', this.link.node, 'body', JSON.stringify({ t: 'tallies', rows }));
      await tx.exec();
      for (const f of chunk) this.#unshared.delete(f);
      this.pushed += rows.length;
    }
  }

  /** Applies the other nodes' stream entries since the last read; a gap (the stream was trimmed past it) means a new sync. */
  async #read(r: Redis): Promise<void> {
    if (await this.#behind(r)) {
      this.log.info('known senders: the changes missed are no longer in the stream; loading everything again');
      this.#synced = false;
      return;
    }
    for (;;) {
      const entries = (await r.xrange(this.#key('changes'), `(${this.#lastId}`, '+', 'COUNT', READ_BATCH)) as Array<[string, string[]]>;
      for (const [id, fields] of entries) {
        this.#lastId = id;
        if (this.#seen !== null) this.#seen++;
        const f: Record<string, string> = {};
        for (let i = 0; i + 1 < fields.length; i += 2) f[fields[i]] = fields[i + 1];
        if (f.node === this.link.node || !f.body) continue;
        this.#apply(f.node, f.body);
      }
      if (entries.length < READ_BATCH) return;
    }
  }

  /**
   * Whether entries after the last one read were trimmed away: on Redis 7 more entries were removed
   * than this node had seen (entries-added less the length); before it, the first entry left is
   * after the last one read.
   */
  async #behind(r: Redis): Promise<boolean> {
    let info: { added: number | null; length: number; first: string | null };
    try {
      info = streamInfo((await r.xinfo('STREAM', this.#key('changes'))) as unknown[]);
    } catch {
      return false; // no stream yet
    }
    if (info.added !== null && this.#seen !== null) return info.added - info.length > this.#seen;
    return this.#lastId !== '0-0' && info.first !== null && idAfter(info.first, this.#lastId);
  }

  #apply(node: string, body: string): void {
    let change: SendersChange;
    try {
      change = JSON.parse(body) as SendersChange;
    } catch {
      return;
    }
    this.applied++;
    if (change.t === 'reset') {
      this.host.dropPeer(node);
      return;
    }
    if (change.t === 'tallies' && Array.isArray(change.rows)) {
      const rows: Array<SenderRef & { tally: Tally | null }> = [];
      for (const [kind, key, tally] of change.rows) {
        const ref = refOf(`${kind}|${key}`);
        if (ref) rows.push({ ...ref, tally: tally === null ? null : tallyOf(tally) });
      }
      this.host.peerTallies(node, rows);
      return;
    }
    const ref = refOf(`${(change as { kind: string }).kind}|${(change as { key: string }).key}`);
    if (!ref) return;
    if (change.t === 'mark') {
      const mark = markOf(change.mark);
      if (mark) this.host.applyMark(ref, mark);
    } else if (change.t === 'forget' && typeof change.at === 'number') {
      this.host.applyForget(ref, change.at);
    }
  }
}

/** The fields of XINFO STREAM this needs. */
function streamInfo(info: unknown[]): { added: number | null; length: number; first: string | null } {
  const get = (name: string) => {
    const at = info.indexOf(name);
    return at >= 0 ? info[at + 1] : undefined;
  };
  const added = get('entries-added');
  const first = get('first-entry') as [string, string[]] | null | undefined;
  return { added: typeof added === 'number' ? added : null, length: Number(get('length') ?? 0), first: first ? first[0] : null };
}

function parseTally(json: string): Tally | null {
  try {
    return tallyOf(JSON.parse(json));
  } catch {
    return null;
  }
}
