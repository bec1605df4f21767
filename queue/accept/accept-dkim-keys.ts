/*
 * The DKIM keys of one config snapshot, and which of them sign a given message.
 *
 * Takes: the tenants' `dkim` sections (accept-dkim-config.ts); reads each key file once, when the
 *   snapshot is built (start, reload: a rotated key file is picked up by a reload).
 * Gives: `keysFor(tenant, fromDomain)`: the keys that sign mail a sender of `tenant` sends with
 *   that RFC 5322.From domain — every key of the domain (several during a rotation: several
 *   signatures), else every key of its nearest parent domain that has `subdomains: true`, else
 *   none. `tenant` null is a trusted network no tenant claims (global trustedNetworks): such a
 *   relay signs for whichever tenant has keys for the domain, as OpenDKIM signs for its
 *   InternalHosts. An authenticated user of one tenant never gets another tenant's keys.
 * `signingFor(tenant)` is what the accept step is given for one sender's mail (null: that sender's
 * tenant has no keys, so its mail needs no header block kept and no body hash).
 * A key file that cannot be read when the snapshot is built throws with the key's path named, so
 * the reload fails and the snapshot in force stays.
 */
import type { KeyObject } from 'node:crypto';
import { readSigningKey, type DkimKeyConfig } from './accept-dkim-config.js';

export interface DkimKey {
  tenant: string;
  domain: string;
  selector: string;
  algorithm: DkimKeyConfig['algorithm'];
  headers: readonly string[];
  oversign: readonly string[];
  expireMs: number | null;
  privateKey: KeyObject;
}

/** What the accept step is given for mail that may be signed: its keys by From: domain, and the counter. */
export interface DkimSigning {
  keys(fromDomain: string): DkimKey[];
  /** One key's outcome on one message (the metrics); null: no key was tried. */
  count(key: DkimKey | null, result: 'signed' | 'failed'): void;
}

export type DkimCount = (key: DkimKey | null, result: 'signed' | 'failed') => void;

export class DkimKeys {
  /** domain → its keys, in config order; `sub` those that also sign for subdomains. */
  readonly #byDomain = new Map<string, Array<DkimKey & { sub: boolean }>>();

  constructor(tenants: Record<string, { dkim: readonly DkimKeyConfig[] }>, private readonly count: DkimCount = () => undefined) {
    for (const [tenant, t] of Object.entries(tenants)) {
      t.dkim.forEach((entry, i) => {
        const loaded = readSigningKey(entry.key, entry.algorithm);
        if ('problem' in loaded) throw new Error(`tenants.${tenant}.dkim[${i}].key: ${loaded.problem}`);
        const list = this.#byDomain.get(entry.domain) ?? [];
        list.push({
          tenant, domain: entry.domain, selector: entry.selector, algorithm: entry.algorithm, headers: entry.headers,
          oversign: entry.oversign, expireMs: entry.expire ?? null, privateKey: loaded.key, sub: entry.subdomains,
        });
        this.#byDomain.set(entry.domain, list);
      });
    }
  }

  get size(): number {
    return this.#byDomain.size;
  }

  /** Whether `tenant` (null: any tenant) has any key at all: if not, its mail needs no body hash. */
  signs(tenant: string | null): boolean {
    for (const list of this.#byDomain.values()) if (list.some((k) => tenant === null || k.tenant === tenant)) return true;
    return false;
  }

  keysFor(tenant: string | null, fromDomain: string): DkimKey[] {
    const mine = (k: DkimKey) => tenant === null || k.tenant === tenant;
    const exact = (this.#byDomain.get(fromDomain) ?? []).filter(mine);
    if (exact.length > 0) return exact;
    for (let dot = fromDomain.indexOf('.'); dot !== -1; dot = fromDomain.indexOf('.', dot + 1)) {
      const parent = (this.#byDomain.get(fromDomain.slice(dot + 1)) ?? []).filter((k) => k.sub && mine(k));
      if (parent.length > 0) return parent;
    }
    return [];
  }

  signingFor(tenant: string | null): DkimSigning | null {
    if (!this.signs(tenant)) return null;
    return { keys: (domain) => this.keysFor(tenant, domain), count: this.count };
  }
}
