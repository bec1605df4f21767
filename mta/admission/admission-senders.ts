/*
 * The known senders: who usually sends here, learned in normal times so that under pressure they
 * can be served first (issue 15, seed 003).
 *
 * Takes: one `SenderEvent` per message accepted or refused (admission-learn.ts makes it from the
 *   accept step's result), resolver pairings from the DNS responder, operators' pins, blocks and
 *   forgets (admin/admin-senders.ts).
 * Gives: `standing(address)` — synchronous, from memory, on every connection: a client network's
 *   standing (trusted networks and tenants' networks count as pinned); `standingOf`, and
 *   `resolverStanding` (a resolver is known when a client it was paired with stands known or
 *   pinned); `list` / `show` for operators; `counts()` per kind and standing, kept up to date as
 *   entries change (the metrics read them without a scan).
 * Entries (admission-senders-key.ts): per client network, AUTH user, aligned sending domain and
 *   resolver, each with a tally (admission-senders-tally.ts: decayed clean / refused / spam counts,
 *   spam score, first and last seen) and an operator's mark.
 * Memory and disk: the entries in memory (admission-senders-entries.ts: at most maxEntries, the
 *   least recently seen unmarked one goes first; those not seen for forgetAfter are dropped,
 *   marked ones kept); every flushEvery what changed goes to SQLite (admission-senders-sql.ts) and
 *   a slice of the entries is judged again, since decay moves a sender from known to unknown with
 *   time. In a cluster the entries are shared (admission-senders-share.ts).
 * Settings: admission.senders.*
 */
import { isIP } from 'node:net';
import { join } from 'node:path';
import type { Logger } from 'pino';
import type { ClusterLink } from '../../queue/cluster/cluster-link.js';
import type { SendersConfig } from './admission-config.js';
import { isKnown } from './admission-decide.js';
import { idOf, SenderEntries, type Entry } from './admission-senders-entries.js';
import { displayKey, networkKey, parseSenderKey, resolverKey, type SenderKind, type SenderRef } from './admission-senders-key.js';
import { OWN, SendersDb } from './admission-senders-sql.js';
import { SendersShare, type ShareHost, type ShareLimits } from './admission-senders-share.js';
import { counted, emptyTally, paired, standingByCounts, type Mark, type Standing, type Tally } from './admission-senders-tally.js';

export type { Standing } from './admission-senders-tally.js';
export type { SenderKind, SenderRef } from './admission-senders-key.js';
export type { SendersConfig } from './admission-config.js';

export interface SenderEvent {
  /** The client's IP. */
  address: string;
  /** The AUTH user, when the session authenticated. */
  authUser: string | null;
  /** The sending domain when DKIM- or SPF-aligned (else null). */
  domain: string | null;
  outcome: 'clean' | 'refused' | 'spam';
  /** The aggregated spam score, when the engines gave one. */
  score: number | null;
}

/** An entry as operators see it. */
export interface SenderView {
  kind: SenderKind;
  key: string;
  standing: Standing;
  clean: number;
  refused: number;
  spam: number;
  /** The mean spam score, when any was given. */
  score: number | null;
  firstSeen: number | null;
  lastSeen: number | null;
  mark: Mark | null;
  /** Nodes whose counts are in it (this one included). */
  nodes: number;
  pairs?: string[];
}

export class KnownSenders implements ShareHost {
  readonly #entries: SenderEntries;
  #config: SendersConfig;
  #timer: NodeJS.Timeout | null = null;
  #closed = false;
  #flushing: Promise<void> | null = null;
  readonly #share: SendersShare | null;

  private constructor(private readonly db: SendersDb, config: SendersConfig, private readonly trusted: (address: string) => boolean,
    link: ClusterLink | null, private readonly log: Logger, limits?: ShareLimits) {
    this.#config = config;
    this.#share = link && new SendersShare(link, db, this, () => this.#config.forgetAfter, log, limits);
    // A dropped entry this node had counted: the cluster is told it no longer counts it.
    this.#entries = new SenderEntries(() => this.#config, (entry) => { if (entry.own) this.#share?.changed(entry); });
  }

  /** `shareLimits`: the stream's length and the pushes kept while Redis is away (tests make them small). */
  static open(opts: { dataDir: string; config: SendersConfig; trusted: (address: string) => boolean; link: ClusterLink | null; log: Logger; shareLimits?: ShareLimits }): KnownSenders {
    const db = SendersDb.open(join(opts.dataDir, 'senders.sqlite'));
    const senders = new KnownSenders(db, opts.config, opts.trusted, opts.link, opts.log, opts.shareLimits);
    senders.#load();
    senders.#schedule();
    opts.log.info({ entries: senders.#entries.size, shared: opts.link !== null }, 'known senders loaded');
    return senders;
  }

  get size(): number {
    return this.#entries.size;
  }

  /** In step with the cluster's Redis (false without a cluster). */
  get synced(): boolean {
    return this.#share?.synced ?? false;
  }

  standing(address: string): Standing {
    if (this.trusted(address)) return 'pinned';
    const entry = this.#entries.get({ kind: 'network', key: networkKey(address, this.#config) });
    return entry ? this.#judge(entry, Date.now()) : 'unknown';
  }

  standingOf(kind: SenderKind, key: string): Standing {
    if (kind === 'resolver') return this.resolverStanding(key);
    if (kind === 'network' && isIP(key)) return this.standing(key);
    const entry = this.#entries.get({ kind, key });
    return entry ? this.#judge(entry, Date.now()) : 'unknown';
  }

  /** Learns from one message (null: nothing to learn, as learnedFrom says for some results). */
  record(e: SenderEvent | null): void {
    if (!e || this.#closed || isIP(e.address) === 0) return;
    const now = Date.now();
    const refs: SenderRef[] = [{ kind: 'network', key: networkKey(e.address, this.#config) }];
    if (e.authUser) refs.push({ kind: 'user', key: e.authUser });
    if (e.domain) refs.push({ kind: 'domain', key: e.domain.toLowerCase() });
    for (const ref of refs) {
      this.#learn(ref, now, (t) => counted(t, e.outcome, e.score, now, this.#config.halfLife));
    }
  }

  pairResolver(resolver: string, client: string): void {
    if (this.#closed || isIP(resolver) === 0 || isIP(client) === 0) return;
    const now = Date.now();
    this.#learn({ kind: 'resolver', key: resolverKey(resolver) }, now, (t) => paired(t, client, now, this.#config.halfLife));
  }

  resolverStanding(resolver: string): Standing {
    if (isIP(resolver) && this.trusted(resolver)) return 'pinned';
    const key = isIP(resolver) ? resolverKey(resolver) : resolver;
    const entry = this.#entries.get({ kind: 'resolver', key });
    return entry ? this.#judge(entry, Date.now()) : 'unknown';
  }

  apply(config: SendersConfig): void {
    const reschedule = config.flushEvery !== this.#config.flushEvery;
    this.#config = config;
    if (reschedule) this.#schedule();
  }

  // --- operators ---------------------------------------------------------------------------

  /** The entry an operator's KEY names under the prefixes in force (admission-senders-key.ts). */
  parseKey(text: string): SenderRef | { error: string } {
    return parseSenderKey(text, this.#config);
  }

  /** Pins or blocks an entry (one never seen is created: a partner can be pinned before it sends). Resolves whether the cluster has it already. */
  async mark(ref: SenderRef, flag: Mark['flag'], note: string | null, by: string): Promise<{ view: SenderView; shared: boolean }> {
    const mark: Mark = { flag, note, at: Date.now(), by };
    this.applyMark(ref, mark);
    const shared = this.#share ? await this.#share.publish({ t: 'mark', kind: ref.kind, key: ref.key, mark }) : false;
    this.log.info({ sender: displayKey(ref), flag, note, by }, `known senders: ${flag}`);
    return { view: this.show(ref)!, shared };
  }

  /** Forgets an entry everywhere: its counts, its mark. Resolves null when there is no such entry. */
  async forget(ref: SenderRef, by: string): Promise<{ view: SenderView; shared: boolean } | null> {
    const view = this.show(ref);
    if (!view) return null;
    const at = Date.now();
    this.#entries.remove(this.#entries.get(ref)!);
    const shared = this.#share ? await this.#share.publish({ t: 'forget', kind: ref.kind, key: ref.key, at, by }) : false;
    this.log.info({ sender: displayKey(ref), by }, 'known senders: forgotten');
    return { view, shared };
  }

  show(ref: SenderRef): SenderView | null {
    const entry = this.#entries.get(ref);
    return entry ? this.#view(entry, Date.now()) : null;
  }

  /** Entries, most recently seen first (views are built only for those shown). */
  list(filter: { kind?: SenderKind; standing?: Standing; limit?: number } = {}): { total: number; senders: SenderView[] } {
    const now = Date.now();
    const found: Array<{ entry: Entry; at: number }> = [];
    for (const entry of this.#entries.values()) {
      if (filter.kind && entry.kind !== filter.kind) continue;
      if (filter.standing && this.#judge(entry, now) !== filter.standing) continue;
      found.push({ entry, at: this.#entries.lastSeen(entry) || entry.mark?.at || 0 });
    }
    found.sort((a, b) => b.at - a.at || (displayKey(a.entry) < displayKey(b.entry) ? -1 : 1));
    return { total: found.length, senders: found.slice(0, filter.limit ?? 100).map((f) => this.#view(f.entry, now)) };
  }

  /** Changes whenever a client network may have entered or left `steeredNetworks`. */
  get steeredNetworksChanges(): number {
    return this.#entries.steeredNetworksChanges;
  }

  /**
   * In one pass over the entries, the client networks the accept queues are steered by, as last
   * judged: those standing pinned or known (pinned first, then the most recently seen first) and
   * those standing blocked (an operator's block).
   */
  steeredNetworks(): { known: string[]; blocked: string[] } {
    const found: Array<{ key: string; pinned: boolean; at: number }> = [];
    const blocked: string[] = [];
    for (const entry of this.#entries.values()) {
      if (entry.kind !== 'network') continue;
      if (entry.standing === 'blocked') blocked.push(entry.key);
      else if (isKnown(entry.standing)) found.push({ key: entry.key, pinned: entry.standing === 'pinned', at: this.#entries.lastSeen(entry) });
    }
    found.sort((a, b) => Number(b.pinned) - Number(a.pinned) || b.at - a.at);
    return { known: found.map((f) => f.key), blocked };
  }

  /** Entries per kind and standing, as last judged. */
  counts(): Array<{ kind: SenderKind; standing: Standing; n: number }> {
    return this.#entries.counts();
  }

  /** Judges a slice again, writes what changed, shares; one flush at a time. */
  flush(): Promise<void> {
    this.#flushing ??= (async () => {
      const now = Date.now();
      this.#entries.refresh(now, (entry) => this.#judge(entry, now));
      await this.#entries.write(this.db, () => new Promise((resolve) => setImmediate(resolve)));
      await this.#share?.flush();
    })().finally(() => { this.#flushing = null; });
    return this.#flushing;
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    if (this.#timer) clearInterval(this.#timer);
    try {
      await this.#flushing?.catch(() => undefined);
      await this.#entries.write(this.db);
      await this.#share?.flush();
    } finally {
      this.db.close();
    }
  }

  // --- ShareHost: what the cluster applies ----------------------------------------------------

  ownTally(ref: SenderRef): Tally | null {
    return this.#entries.get(ref)?.own ?? null;
  }

  allOwn(): Array<SenderRef & { tally: Tally }> {
    return [...this.#entries.values()].flatMap((e) => (e.own ? [{ kind: e.kind, key: e.key, tally: e.own }] : []));
  }

  localMarks(): Array<SenderRef & { mark: Mark }> {
    return [...this.#entries.values()].flatMap((e) => (e.mark ? [{ kind: e.kind, key: e.key, mark: e.mark }] : []));
  }

  peerTallies(node: string, rows: Array<SenderRef & { tally: Tally | null }>): void {
    const now = Date.now();
    for (const { tally, ...ref } of rows) {
      if (!tally && !this.#entries.get(ref)) continue;
      const entry = this.#entries.ensure(ref);
      entry.peers ??= new Map();
      if (tally) entry.peers.set(node, tally);
      else entry.peers.delete(node);
      this.#entries.peerChanged(entry, node);
      this.#entries.touch(entry, tally?.lastSeen ?? 0);
      this.#judge(entry, now);
      this.#entries.dropIfEmpty(entry);
    }
  }

  dropPeer(node: string): void {
    const now = Date.now();
    for (const entry of [...this.#entries.values()]) {
      if (!entry.peers?.delete(node)) continue;
      this.#entries.peerChanged(entry, node);
      this.#judge(entry, now);
      this.#entries.dropIfEmpty(entry);
    }
  }

  replacePeers(rows: Array<SenderRef & { node: string; tally: Tally }>): void {
    for (const entry of this.#entries.values()) {
      if (!entry.peers) continue;
      for (const node of entry.peers.keys()) this.#entries.peerChanged(entry, node);
      entry.peers = null;
    }
    const byNode = new Map<string, Array<SenderRef & { tally: Tally }>>();
    for (const { node, ...row } of rows) {
      if (!byNode.has(node)) byNode.set(node, []);
      byNode.get(node)!.push(row);
    }
    for (const [node, list] of byNode) this.peerTallies(node, list);
    const now = Date.now();
    for (const entry of [...this.#entries.values()]) {
      this.#judge(entry, now);
      this.#entries.dropIfEmpty(entry);
    }
  }

  applyMark(ref: SenderRef, mark: Mark): void {
    const entry = this.#entries.ensure(ref);
    entry.mark = mark;
    this.db.setMark(ref, mark);
    this.#judge(entry, Date.now());
  }

  applyForget(ref: SenderRef, at: number): void {
    const entry = this.#entries.get(ref);
    if (!entry) return;
    // A sender this node saw again after the forget keeps this node's own count of it.
    if (entry.own && entry.own.lastSeen > at) {
      entry.mark = null;
      this.db.setMark(ref, null);
      for (const node of entry.peers?.keys() ?? []) this.#entries.peerChanged(entry, node);
      entry.peers = null;
      this.#judge(entry, Date.now());
      return;
    }
    this.#entries.remove(entry);
  }

  replaceMarks(marks: Array<SenderRef & { mark: Mark }>, forgets: Array<SenderRef & { at: number }>): void {
    const wanted = new Set(marks.map((m) => idOf(m)));
    for (const entry of [...this.#entries.values()]) {
      if (entry.mark && !wanted.has(idOf(entry))) {
        entry.mark = null;
        this.db.setMark(entry, null);
        this.#judge(entry, Date.now());
        this.#entries.dropIfEmpty(entry);
      }
    }
    for (const { mark, ...ref } of marks) {
      const have = this.#entries.get(ref)?.mark;
      if (!have || have.at !== mark.at || have.flag !== mark.flag || have.note !== mark.note) this.applyMark(ref, mark);
    }
    for (const { at, ...ref } of forgets) this.applyForget(ref, at);
  }

  // --- inside ------------------------------------------------------------------------------

  #load(): void {
    for (const { node, tally, ...ref } of this.db.tallies()) {
      const entry = this.#entries.ensure(ref);
      // Rows come least recently seen first: the map is in that order without moving entries.
      if (node === OWN) entry.own = tally;
      else (entry.peers ??= new Map()).set(node, tally);
    }
    for (const { mark, ...ref } of this.db.marks()) this.#entries.ensure(ref).mark = mark;
    const now = Date.now();
    for (const entry of this.#entries.values()) this.#judge(entry, now);
  }

  #schedule(): void {
    if (this.#timer) clearInterval(this.#timer);
    this.#timer = setInterval(() => {
      this.flush().catch((err: Error) => this.log.error({ err }, 'known senders: could not be written'));
    }, this.#config.flushEvery);
    this.#timer.unref();
  }

  #learn(ref: SenderRef, now: number, change: (t: Tally) => Tally): void {
    const entry = this.#entries.ensure(ref);
    entry.own = change(entry.own ?? emptyTally(now));
    this.#entries.ownChanged(entry);
    this.#share?.changed(ref);
    this.#entries.touch(entry, now);
    this.#judge(entry, now);
  }

  /** The entry's standing now (a resolver's from the clients it was paired with); the counts follow it. */
  #judge(entry: Entry, now: number): Standing {
    const { clean, bad } = this.#entries.decayedCounts(entry, now);
    let standing = standingByCounts(entry.mark, clean, bad, this.#config);
    if (entry.kind === 'resolver' && !entry.mark) {
      const pairs = this.#entries.tally(entry, now)?.pairs ?? [];
      standing = pairs.some((client) => ['known', 'pinned'].includes(this.standing(client))) ? 'known' : 'unknown';
    }
    this.#entries.setStanding(entry, standing);
    return standing;
  }

  #view(entry: Entry, now: number): SenderView {
    const t = this.#entries.tally(entry, now);
    const round = (n: number) => Math.round(n * 100) / 100;
    return {
      kind: entry.kind,
      key: displayKey(entry),
      standing: this.#judge(entry, now),
      clean: round(t?.clean ?? 0),
      refused: round(t?.refused ?? 0),
      spam: round(t?.spam ?? 0),
      score: t && t.scored > 0 ? round(t.scoreSum / t.scored) : null,
      firstSeen: t?.firstSeen ?? null,
      lastSeen: t?.lastSeen ?? null,
      mark: entry.mark,
      nodes: (entry.own ? 1 : 0) + (entry.peers?.size ?? 0),
      ...(t?.pairs ? { pairs: t.pairs } : {}),
    };
  }
}
