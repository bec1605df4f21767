/*
 * The known senders' entries in memory: the map, the counts per kind and standing the metric
 * reads, what changed since the last write to SQLite, and the bounds (maxEntries, forgetAfter).
 *
 * Takes: entries made, touched, judged and removed by KnownSenders (admission-senders.ts).
 * Gives: the map in least-recently-seen-first order (an entry seen again moves to the end, so the
 *   ones evicted when a new entry would pass maxEntries are the least recently seen unmarked ones,
 *   a hundredth of maxEntries at a time);
 *   `counts()`, kept as standings change, never a scan; `write(db)`, one batch per flush; `refresh`,
 *   which judges the next slice of entries again (decay moves senders from known to unknown with
 *   time) and drops unmarked entries not seen for forgetAfter, so the whole map is gone over every
 *   size / SLICE flushes.
 * Settings: admission.senders.maxEntries, forgetAfter, halfLife.
 */
import type { SendersConfig } from './admission-config.js';
import { isKnown } from './admission-decide.js';
import { SENDER_KINDS, type SenderKind, type SenderRef } from './admission-senders-key.js';
import { OWN, type SendersBatch, type SendersDb } from './admission-senders-sql.js';
import { decayFactor, merged, STANDINGS, type Mark, type Standing, type Tally } from './admission-senders-tally.js';

export interface Entry extends SenderRef {
  /** This node's own count. */
  own: Tally | null;
  /** What the other nodes of a cluster counted, by node. */
  peers: Map<string, Tally> | null;
  mark: Mark | null;
  /** The standing last judged (what counts() holds it under). */
  standing: Standing;
}

/** Entries judged again (and forgotten when stale) per flush. */
const SLICE = 2000;
/** Rows written to SQLite per transaction. */
const WRITE_CHUNK = 2000;

export const idOf = (ref: SenderRef) => `${ref.kind}|${ref.key}`;

/** Standings the kernel's steering of connections names (mta/mta-known-queue.ts). */
const steered = (s: Standing): boolean => isKnown(s) || s === 'blocked';

export class SenderEntries {
  readonly #map = new Map<string, Entry>();
  readonly #counts = new Map<SenderKind, Record<Standing, number>>(SENDER_KINDS.map((k) => [k, { pinned: 0, known: 0, unknown: 0, blocked: 0 }]));
  /** Own tallies changed since the last write, peers' likewise (id → nodes), entries removed whole. */
  readonly #dirty = new Set<string>();
  readonly #dirtyPeers = new Map<string, Set<string>>();
  readonly #removed = new Map<string, SenderRef>();
  #slice: Iterator<Entry> | null = null;
  #steeredNetworksChanges = 0;

  /** `removed`: called for each entry dropped (evicted, forgotten, stale). */
  constructor(private readonly config: () => SendersConfig, private readonly removed: (entry: Entry) => void) {}

  get size(): number {
    return this.#map.size;
  }

  get(ref: SenderRef): Entry | undefined {
    return this.#map.get(idOf(ref));
  }

  values(): IterableIterator<Entry> {
    return this.#map.values();
  }

  /** The entry, made (unknown, counted) when there is none; making one past maxEntries evicts another. */
  ensure(ref: SenderRef): Entry {
    const have = this.#map.get(idOf(ref));
    if (have) return have;
    if (this.#map.size >= this.config().maxEntries) this.#evict(this.#map.size - this.config().maxEntries + 1 + Math.floor(this.config().maxEntries / 100));
    const entry: Entry = { kind: ref.kind, key: ref.key, own: null, peers: null, mark: null, standing: 'unknown' };
    this.#map.set(idOf(ref), entry);
    this.#counts.get(ref.kind)!.unknown++;
    return entry;
  }

  /** Moves an entry to the most recently seen end when `seen` is its newest sighting. */
  touch(entry: Entry, seen: number): void {
    if (seen < this.lastSeen(entry)) return;
    const id = idOf(entry);
    this.#map.delete(id);
    this.#map.set(id, entry);
  }

  ownChanged(entry: Entry): void {
    this.#dirty.add(idOf(entry));
  }

  peerChanged(entry: Entry, node: string): void {
    const id = idOf(entry);
    if (!this.#dirtyPeers.has(id)) this.#dirtyPeers.set(id, new Set());
    this.#dirtyPeers.get(id)!.add(node);
  }

  remove(entry: Entry): void {
    const id = idOf(entry);
    if (this.#map.get(id) !== entry) return;
    this.#map.delete(id);
    this.#counts.get(entry.kind)![entry.standing]--;
    if (entry.kind === 'network' && steered(entry.standing)) this.#steeredNetworksChanges++;
    this.#dirty.delete(id);
    this.#dirtyPeers.delete(id);
    this.#removed.set(id, { kind: entry.kind, key: entry.key });
    this.removed(entry);
  }

  /** An entry with no count and no mark left goes. */
  dropIfEmpty(entry: Entry): void {
    if (!entry.own && !entry.mark && (!entry.peers || entry.peers.size === 0)) this.remove(entry);
  }

  /** Every node's count of the entry, added up at `now`. */
  tally(entry: Entry, now: number): Tally | null {
    const all = entry.own ? [entry.own] : [];
    if (entry.peers) all.push(...entry.peers.values());
    return merged(all, now, this.config().halfLife);
  }

  /** The decayed clean and bad (refused + spam) counts of every node at `now`, without building a tally. */
  decayedCounts(entry: Entry, now: number): { clean: number; bad: number } {
    const halfLife = this.config().halfLife;
    let clean = 0;
    let bad = 0;
    const add = (t: Tally) => {
      const f = decayFactor(t.at, now, halfLife);
      clean += t.clean * f;
      bad += (t.refused + t.spam) * f;
    };
    if (entry.own) add(entry.own);
    if (entry.peers) for (const t of entry.peers.values()) add(t);
    return { clean, bad };
  }

  lastSeen(entry: Entry): number {
    let last = entry.own?.lastSeen ?? 0;
    for (const t of entry.peers?.values() ?? []) last = Math.max(last, t.lastSeen);
    return last;
  }

  /** Changes each time a client network's standing changes to or from one the accept queues are steered by (pinned, known, blocked). */
  get steeredNetworksChanges(): number {
    return this.#steeredNetworksChanges;
  }

  /** Records the entry's standing; the counts follow (an entry no longer in the map counts nowhere). */
  setStanding(entry: Entry, standing: Standing): void {
    if (standing !== entry.standing && this.#map.get(idOf(entry)) === entry) {
      const counts = this.#counts.get(entry.kind)!;
      counts[entry.standing]--;
      counts[standing]++;
      if (entry.kind === 'network' && (steered(entry.standing) || steered(standing))) this.#steeredNetworksChanges++;
    }
    entry.standing = standing;
  }

  counts(): Array<{ kind: SenderKind; standing: Standing; n: number }> {
    return SENDER_KINDS.flatMap((kind) => STANDINGS.map((standing) => ({ kind, standing, n: this.#counts.get(kind)![standing] })));
  }

  /** Judges the next slice again and drops the unmarked entries not seen for forgetAfter; then holds maxEntries (a reload may lower it). */
  refresh(now: number, judge: (entry: Entry) => void): void {
    const oldest = now - this.config().forgetAfter;
    this.#slice ??= this.#map.values();
    for (let i = 0; i < SLICE; i++) {
      const next = this.#slice.next();
      if (next.done) {
        this.#slice = null;
        break;
      }
      const entry = next.value;
      if (!entry.mark && this.lastSeen(entry) < oldest) this.remove(entry);
      else judge(entry);
    }
    if (this.#map.size > this.config().maxEntries) this.#evict(this.#map.size - this.config().maxEntries);
  }

  /**
   * Writes what changed since the last write: the removals and the changed tallies, in
   * transactions of WRITE_CHUNK rows; `pause` runs between them (the flush lets the event loop
   * serve connections there; close writes at once).
   */
  async write(db: SendersDb, pause: () => Promise<void> = async () => undefined): Promise<void> {
    if (this.#dirty.size === 0 && this.#dirtyPeers.size === 0 && this.#removed.size === 0) return;
    const batch: SendersBatch = { tallies: [], removed: [...this.#removed.values()] };
    for (const id of this.#dirty) {
      const entry = this.#map.get(id);
      if (entry) batch.tallies.push({ kind: entry.kind, key: entry.key, node: OWN, tally: entry.own });
    }
    for (const [id, nodes] of this.#dirtyPeers) {
      const entry = this.#map.get(id);
      if (!entry) continue;
      for (const node of nodes) batch.tallies.push({ kind: entry.kind, key: entry.key, node, tally: entry.peers?.get(node) ?? null });
    }
    // An entry removed and made again since the last write: its old rows go, then all it has now is written.
    const remade: Entry[] = [];
    for (const [id, ref] of this.#removed) {
      const entry = this.#map.get(id);
      if (!entry) continue;
      remade.push(entry);
      if (!this.#dirty.has(id)) batch.tallies.push({ ...ref, node: OWN, tally: entry.own });
      for (const [node, tally] of entry.peers ?? []) if (!this.#dirtyPeers.get(id)?.has(node)) batch.tallies.push({ ...ref, node, tally });
    }
    // Taken now: what changes while the chunks are written waits for the next write.
    this.#dirty.clear();
    this.#dirtyPeers.clear();
    this.#removed.clear();
    for (let i = 0; i < batch.removed.length; i += WRITE_CHUNK) {
      db.write({ tallies: [], removed: batch.removed.slice(i, i + WRITE_CHUNK) });
      await pause();
    }
    for (const entry of remade) if (entry.mark) db.setMark(entry, entry.mark);
    for (let i = 0; i < batch.tallies.length; i += WRITE_CHUNK) {
      db.write({ tallies: batch.tallies.slice(i, i + WRITE_CHUNK), removed: [] });
      if (i + WRITE_CHUNK < batch.tallies.length) await pause();
    }
  }

  /**
   * The `n` least recently seen unmarked entries go. Room is made a hundredth of maxEntries at a
   * time: each walk from the front of the map passes over the slots earlier removals left there.
   */
  #evict(n: number): void {
    const victims: Entry[] = [];
    for (const entry of this.#map.values()) {
      if (victims.length >= n) break;
      if (!entry.mark) victims.push(entry);
    }
    for (const entry of victims) this.remove(entry);
  }
}
