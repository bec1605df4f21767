/*
 * Per-client limits, as Postfix's anvil keeps them: simultaneous connections, new connections per
 * minute and messages (MAIL FROM commands, accepted or not) per minute, per client address and
 * listener.
 *
 * Takes: connect / disconnect / MAIL events with the client's address and the current limits.
 * Gives: null (go on) or the refusal: 421 4.7.0 at connect (too many connections, too many new
 * connections), 450 4.7.1 at MAIL FROM (too much mail), as Postfix's smtpd answers them.
 * Addresses in `limits.client.exceptions` (default: the trusted networks and tenants' networks,
 * Postfix's smtpd_client_event_limit_exceptions = $mynetworks) are not limited.
 * Clients are counted by `clientKey`: an IPv6 client by its /64 (limits.client.ipv6Prefix).
 * Memory: one entry per open client key, and one per key seen in the last minute — expired
 * entries are swept once a minute on the next event, and at most MAX_TRACKED keys are kept (the
 * longest-unseen are forgotten first).
 * Settings: limits.client.*.
 */
import type { BlockList } from 'node:net';
import type { Config } from '../mta-config-schema.js';
import { blockListOf, inList, type Policy } from './ingress-policy.js';
import { REPLIES, type SmtpReply } from '../../base/base-reply.js';

const MINUTE = 60_000;
const MAX_TRACKED = 100_000;
/** How often the keys whose events all left the window are swept out. */
export const SWEEP_EVERY = MINUTE;

/** Timestamps of recent events per key, within a window given at each call. */
export class RecentEvents {
  readonly #events = new Map<string, number[]>();
  #swept = 0;

  constructor(private readonly maxKeys = MAX_TRACKED) {}

  get size(): number {
    return this.#events.size;
  }

  /** Records an event now and returns how many fell within `windowMs` (this one included). */
  add(key: string, windowMs: number, now = Date.now()): number {
    this.#sweep(windowMs, now);
    const times = this.#recent(key, windowMs, now);
    times.push(now);
    // Re-inserted at the end: the map's order is least recently seen first.
    this.#events.delete(key);
    this.#events.set(key, times);
    if (this.#events.size > this.maxKeys) this.#events.delete(this.#events.keys().next().value!);
    return times.length;
  }

  count(key: string, windowMs: number, now = Date.now()): number {
    this.#sweep(windowMs, now);
    const times = this.#recent(key, windowMs, now);
    if (times.length === 0) this.#events.delete(key);
    return times.length;
  }

  clear(key: string): void {
    this.#events.delete(key);
  }

  /** Drops, at most once per SWEEP_EVERY, every key whose newest event is older than `windowMs`. */
  #sweep(windowMs: number, now: number): void {
    if (now - this.#swept < SWEEP_EVERY) return;
    this.#swept = now;
    for (const [key, times] of this.#events) if (times.length === 0 || times[times.length - 1] <= now - windowMs) this.#events.delete(key);
  }

  #recent(key: string, windowMs: number, now: number): number[] {
    const times = this.#events.get(key) ?? [];
    let drop = 0;
    while (drop < times.length && times[drop] <= now - windowMs) drop++;
    if (drop > 0) times.splice(0, drop);
    return times;
  }
}

/**
 * The key a client is counted under: an IPv4 address (IPv4-mapped IPv6 included) as itself, or
 * as its first `ipv4Prefix` bits ("192.0.2.0/24") when that is under 32; an IPv6 address as its
 * first `ipv6Prefix` bits ("2001:db8:0:0:0:0:0:0/64"), since one host or site is given a whole
 * /64 and picks a new address from it at will.
 */
export function clientKey(address: string, ipv6Prefix = 64, ipv4Prefix = 32): string {
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(address);
  if (mapped || !address.includes(':')) {
    const v4 = mapped ? mapped[1] : address;
    if (ipv4Prefix >= 32) return v4;
    const bytes = v4.split('.').map(Number);
    if (bytes.length !== 4 || bytes.some((b) => !(b >= 0 && b <= 255))) return v4;
    const masked = bytes.map((b, i) => {
      const keep = Math.max(0, Math.min(8, ipv4Prefix - i * 8));
      return b & (0xff << (8 - keep)) & 0xff;
    });
    return `${masked.join('.')}/${ipv4Prefix}`;
  }
  const groups = ipv6Groups(address);
  if (!groups) return address.toLowerCase();
  const masked = groups.map((g, i) => {
    const keep = Math.max(0, Math.min(16, ipv6Prefix - i * 16));
    return keep === 0 ? 0 : g & (0xffff << (16 - keep)) & 0xffff;
  });
  return `${masked.map((g) => g.toString(16)).join(':')}/${ipv6Prefix}`;
}

/** The eight 16-bit groups of an IPv6 address (zone id dropped), or null if it is not one. */
function ipv6Groups(address: string): number[] | null {
  let text = address.replace(/%.*$/, '');
  const v4 = /(\d+)\.(\d+)\.(\d+)\.(\d+)$/.exec(text);
  if (v4) {
    const b = v4.slice(1).map(Number);
    text = `${text.slice(0, v4.index)}${((b[0] << 8) | b[1]).toString(16)}:${((b[2] << 8) | b[3]).toString(16)}`;
  }
  const halves = text.split('::');
  if (halves.length > 2) return null;
  const part = (h: string) => (h === '' ? [] : h.split(':').map((g) => (/^[0-9a-f]{1,4}$/i.test(g) ? parseInt(g, 16) : NaN)));
  const head = part(halves[0]);
  const tail = halves.length === 2 ? part(halves[1]) : [];
  const missing = 8 - head.length - tail.length;
  if (halves.length === 1 ? missing !== 0 : missing < 1) return null;
  const groups = [...head, ...Array<number>(halves.length === 2 ? missing : 0).fill(0), ...tail];
  return groups.some(Number.isNaN) ? null : groups;
}

const exceptionLists = new WeakMap<Config, BlockList>();

/** Whether per-address limits leave this client alone under `config`. */
export function isExempt(address: string, config: Config, policy: Policy): boolean {
  const listed = config.limits.client.exceptions;
  if (listed === undefined) return policy.isTrusted(address);
  let list = exceptionLists.get(config);
  if (!list) exceptionLists.set(config, list = blockListOf(listed));
  return inList(list, address);
}

/** Counts per client key (`clientKey`); the caller keeps the key an admitted connection was counted under. */
export class Anvil {
  readonly #open = new Map<string, number>();
  readonly #connects = new RecentEvents();
  readonly #mails = new RecentEvents();

  /** A new connection of a client that is not exempt: null when admitted (then counted until `disconnect`), else the 421. */
  connect(key: string, limits: Config['limits']['client'], now = Date.now()): SmtpReply | null {
    const open = this.#open.get(key) ?? 0;
    if (limits.connectionRate > 0 && this.#connects.add(key, MINUTE, now) > limits.connectionRate) return REPLIES.connectionRate;
    if (limits.maxConnections > 0 && open >= limits.maxConnections) return REPLIES.tooManyConnections;
    this.#open.set(key, open + 1);
    return null;
  }

  /** An admitted connection ended. */
  disconnect(key: string): void {
    const open = (this.#open.get(key) ?? 0) - 1;
    if (open > 0) this.#open.set(key, open);
    else this.#open.delete(key);
  }

  /** A MAIL FROM of a client that is not exempt: null to go on, else the 450. */
  mail(key: string, limits: Config['limits']['client'], now = Date.now()): SmtpReply | null {
    if (limits.messageRate === 0) return null;
    return this.#mails.add(key, MINUTE, now) > limits.messageRate ? REPLIES.messageRate : null;
  }
}
