/*
 * Known recipients from the config's `list` and from a file, as Postfix's relay_recipient_maps
 * looks them up: the address, then without its extension (`delimiter`), then "@domain" for every
 * user of the domain. Lookups fold case
 * (as Postfix's tables do): mailbox servers do not keep two users apart by case.
 *
 * The file: one entry a line, "#" to the end of a line is a comment, blank lines ignored. It is
 * read when the snapshot is built (start, reload) and again when it changes: before a lookup its
 * size, time and inode are looked at, at most once a second. A file that has become unreadable or
 * holds a bad line keeps the entries last read (the problem is logged once per change); one never
 * read makes the check unavailable (450/451), never an acceptance.
 * Takes: the entries, or the file's path. Gives: `has(address)`.
 */
import { readFileSync, statSync } from 'node:fs';
import { readFile, stat } from 'node:fs/promises';
import type { Logger } from 'pino';
import { RECIPIENT_ENTRY } from './ingress-recipients-config.js';

/** How often a file is looked at for changes, at most. */
const STAT_EVERY = 1000;

/** The entries of a file's text; throws naming the first bad line. */
export function parseRecipientFile(text: string): string[] {
  const entries: string[] = [];
  text.split('\n').forEach((raw, i) => {
    const line = raw.replace(/#.*/, '').trim();
    if (!line) return;
    if (!RECIPIENT_ENTRY.test(line)) throw new Error(`line ${i + 1}: "${line.slice(0, 80)}" is not an address such as "user@example.com" or "@example.com"`);
    entries.push(line.toLowerCase());
  });
  return entries;
}

/**
 * Is `address` among `entries`: itself, then without its extension (the local part cut at the
 * first of the `delimiter` characters, as Postfix's recipient_delimiter: "ann+news@" is "ann@"),
 * then its whole domain ("@domain")?
 */
export function listed(entries: ReadonlySet<string>, address: string, delimiter = ''): boolean {
  const a = address.toLowerCase();
  const at = a.lastIndexOf('@');
  if (entries.has(a) || entries.has(a.slice(at))) return true;
  if (!delimiter) return false;
  const local = a.slice(0, at);
  const cut = [...delimiter].map((d) => local.indexOf(d)).filter((i) => i > 0);
  return cut.length > 0 && entries.has(local.slice(0, Math.min(...cut)) + a.slice(at));
}

export class RecipientFile {
  #entries: Set<string> | null = null;
  #seen = '';
  #checked = 0;
  #checking: Promise<void> | null = null;

  constructor(readonly path: string, private readonly log: Logger, private readonly clock: () => number = Date.now) {
    try {
      const s = statSync(path);
      this.#seen = signature(s);
      this.#entries = new Set(parseRecipientFile(readFileSync(path, 'utf8')));
      this.#checked = clock();
    } catch (err) {
      log.error({ file: path, err: (err as Error).message }, 'recipient file not read: its domains answer 450/451 until it is');
    }
  }

  /** True or false once the file was read; null while it never was. */
  async has(address: string, delimiter = ''): Promise<boolean | null> {
    await this.#fresh();
    return this.#entries ? listed(this.#entries, address, delimiter) : null;
  }

  #fresh(): Promise<void> {
    if (this.clock() - this.#checked < STAT_EVERY) return Promise.resolve();
    this.#checking ??= this.#reread().finally(() => {
      this.#checked = this.clock();
      this.#checking = null;
    });
    return this.#checking;
  }

  async #reread(): Promise<void> {
    let sig: string;
    try {
      sig = signature(await stat(this.path));
    } catch (err) {
      if (this.#seen !== 'gone') this.log.warn({ file: this.path, err: (err as Error).message }, 'recipient file unreadable: the entries last read stay in use');
      this.#seen = 'gone';
      return;
    }
    if (sig === this.#seen) return;
    this.#seen = sig;
    try {
      const entries = parseRecipientFile(await readFile(this.path, 'utf8'));
      this.#entries = new Set(entries);
      this.log.info({ file: this.path, entries: entries.length }, 'recipient file read again');
    } catch (err) {
      this.log.warn({ file: this.path, err: (err as Error).message }, 'recipient file not read again: the entries last read stay in use');
    }
  }
}

function signature(s: { size: number; mtimeMs: number; ino: number }): string {
  return `${s.ino}:${s.size}:${s.mtimeMs}`;
}
