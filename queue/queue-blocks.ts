/*
 * Holds and suspensions in force in the scheduler: on a tenant (every site), a site (every
 * tenant), a tenant at a site, or a (site, source address) pair; each until lifted or until its
 * end time, when it lapses by itself.
 */

/** A hold or suspension. Unset fields match everything; `until` null: until lifted. */
export interface Block {
  id: string;
  tenant?: string;
  site?: string;
  /** A source address ('' for the system's choice); with `site`, pauses that pair. */
  source?: string;
  until: number | null;
}

export class Blocks {
  readonly #blocks = new Map<string, Block>();

  set(block: Block): void {
    this.#blocks.set(block.id, block);
  }

  delete(id: string): boolean {
    return this.#blocks.delete(id);
  }

  list(now: number): Block[] {
    this.expire(now);
    return [...this.#blocks.values()];
  }

  expire(now: number): void {
    for (const [id, b] of this.#blocks) if (b.until !== null && b.until <= now) this.#blocks.delete(id);
  }

  /**
   * Until when the asked scope is blocked (0: not). Asked without `source`, pair blocks do not
   * apply; asked with one, only pair blocks and source-wide blocks do.
   */
  until(now: number, tenant: string | undefined, site: string | undefined, source?: string): number {
    let until = 0;
    for (const b of this.#blocks.values()) {
      if (b.until !== null && b.until <= now) continue;
      if (b.tenant !== undefined && b.tenant !== tenant) continue;
      if (b.site !== undefined && b.site !== site) continue;
      if (b.source !== undefined && b.source !== source) continue;
      if (b.source === undefined && source !== undefined) continue;
      if (b.tenant === undefined && b.site === undefined && b.source === undefined) continue;
      until = Math.max(until, b.until ?? Infinity);
    }
    return until;
  }
}
