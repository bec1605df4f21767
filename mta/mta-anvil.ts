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
 * Memory: one entry per address seen in the last minute, at most MAX_TRACKED addresses (the
 * longest-unseen are forgotten first).
 * Settings: limits.client.*.
 */
import type { BlockList } from 'node:net';
import type { Config } from './mta-config-schema.js';
import { blockListOf, inList, type Policy } from './mta-policy.js';
import { REPLIES, type SmtpReply } from './mta-reply.js';

const MINUTE = 60_000;
const MAX_TRACKED = 100_000;

/** Timestamps of recent events per key, within a window given at each call. */
export class RecentEvents {
  readonly #events = new Map<string, number[]>();

  constructor(private readonly maxKeys = MAX_TRACKED) {}

  /** Records an event now and returns how many fell within `windowMs` (this one included). */
  add(key: string, windowMs: number, now = Date.now()): number {
    const times = this.#recent(key, windowMs, now);
    times.push(now);
    // Re-inserted at the end: the map's order is least recently seen first.
    this.#events.delete(key);
    this.#events.set(key, times);
    if (this.#events.size > this.maxKeys) this.#events.delete(this.#events.keys().next().value!);
    return times.length;
  }

  count(key: string, windowMs: number, now = Date.now()): number {
    const times = this.#recent(key, windowMs, now);
    if (times.length === 0) this.#events.delete(key);
    return times.length;
  }

  clear(key: string): void {
    this.#events.delete(key);
  }

  #recent(key: string, windowMs: number, now: number): number[] {
    const times = this.#events.get(key) ?? [];
    let drop = 0;
    while (drop < times.length && times[drop] <= now - windowMs) drop++;
    if (drop > 0) times.splice(0, drop);
    return times;
  }
}

/** The client's address without the IPv4-mapped prefix, so one host is one key. */
export function clientKey(address: string): string {
  return address.replace(/^::ffff:(?=\d+\.\d+\.\d+\.\d+$)/i, '').toLowerCase();
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

export class Anvil {
  readonly #open = new Map<string, number>();
  readonly #connects = new RecentEvents();
  readonly #mails = new RecentEvents();

  /** A new connection of a client that is not exempt: null when admitted (then counted until `disconnect`), else the 421. */
  connect(address: string, limits: Config['limits']['client']): SmtpReply | null {
    const key = clientKey(address);
    const open = this.#open.get(key) ?? 0;
    if (limits.connectionRate > 0 && this.#connects.add(key, MINUTE) > limits.connectionRate) return REPLIES.connectionRate;
    if (limits.maxConnections > 0 && open >= limits.maxConnections) return REPLIES.tooManyConnections;
    this.#open.set(key, open + 1);
    return null;
  }

  /** An admitted connection ended. */
  disconnect(address: string): void {
    const key = clientKey(address);
    const open = (this.#open.get(key) ?? 0) - 1;
    if (open > 0) this.#open.set(key, open);
    else this.#open.delete(key);
  }

  /** A MAIL FROM of a client that is not exempt: null to go on, else the 450. */
  mail(address: string, limits: Config['limits']['client']): SmtpReply | null {
    if (limits.messageRate === 0) return null;
    return this.#mails.add(clientKey(address), MINUTE) > limits.messageRate ? REPLIES.messageRate : null;
  }
}
