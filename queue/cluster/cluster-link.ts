/*
 * The link to the cluster's Redis: one client (ioredis) per node, its health, and the key names.
 *
 * Redis is never on the durability path: every caller treats a failed or slow command as "Redis is
 * away" and decides locally (the fallback its own module defines). Commands are not queued while
 * the connection is down (they fail at once) and each has `cluster.timeout`; the client reconnects
 * by itself, and `up`/`down` are emitted on each change so the modules that share state can
 * resynchronise. `commands` counts what this node sent (the benchmark's round trips per message).
 *
 * Keys: `<prefix>:<name>` for cluster-wide state, and `<prefix>:{<site>}:<name>` for a
 * destination site's, so Redis Cluster keeps one site's keys in one slot (Lua scripts touch only
 * one site's keys).
 * Settings: cluster.redis, cluster.prefix, cluster.timeout, cluster.node.
 */
import { createHash } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { hostname } from 'node:os';
import { resolve } from 'node:path';
import { Redis } from 'ioredis';
import type { Logger } from 'pino';
import type { ClusterConfig } from './cluster-config.js';

/** This node's name: the configured one, else the host name and a digest of its data folder (stable across restarts). */
export function nodeName(cluster: ClusterConfig, dataDir: string): string {
  if (cluster.node) return cluster.node;
  const digest = createHash('sha256').update(resolve(dataDir)).digest('hex').slice(0, 8);
  return `${hostname().replace(/[^A-Za-z0-9._:-]/g, '-')}-${digest}`;
}

export class ClusterLink extends EventEmitter {
  readonly redis: Redis;
  #up = false;
  #closed = false;
  /** Redis commands this node sent (each command of a pipeline counts). */
  commands = 0;
  /** Times a decision was taken locally because Redis was away or slow. */
  fallbacks = 0;

  constructor(readonly config: ClusterConfig & { redis: string }, readonly node: string, private readonly log: Logger) {
    super();
    this.redis = new Redis(config.redis, {
      lazyConnect: true,
      enableOfflineQueue: false,
      maxRetriesPerRequest: 0,
      commandTimeout: config.timeout,
      connectTimeout: Math.max(1000, config.timeout * 2),
      retryStrategy: (times) => Math.min(100 * times, 1000),
      connectionName: `ichidan:${node}`,
    });
    this.redis.on('ready', () => this.#set(true));
    this.redis.on('close', () => this.#set(false));
    // Errors reach the callers of each command; the connection's own are reported once per change.
    this.redis.on('error', () => undefined);
  }

  get up(): boolean {
    return this.#up;
  }

  /** Connects; resolves whether or not Redis answered (a node starts without it and joins when it comes). */
  async connect(): Promise<void> {
    try {
      await this.redis.connect();
    } catch (err) {
      this.log.warn({ err: (err as Error).message, redis: redact(this.config.redis) }, 'cluster: Redis is not reachable; running on local limits until it is');
    }
  }

  key(...parts: string[]): string {
    return [this.config.prefix, ...parts].join(':');
  }

  /** A key of one site's state: the hash tag keeps a site's keys in one Redis Cluster slot. */
  siteKey(site: string, ...parts: string[]): string {
    return [this.config.prefix, `{${site}}`, ...parts].join(':');
  }

  /**
   * Runs `fn` against Redis, counting `commands` commands. Resolves with its result, or with
   * `undefined` when Redis is away or failed (the caller falls back; this is counted).
   */
  async call<T>(commands: number, fn: (redis: Redis) => Promise<T>): Promise<T | undefined> {
    if (!this.#up || this.#closed) {
      this.fallbacks++;
      return undefined;
    }
    this.commands += commands;
    try {
      return await fn(this.redis);
    } catch (err) {
      this.fallbacks++;
      this.log.debug({ err: (err as Error).message }, 'cluster: a Redis command failed');
      return undefined;
    }
  }

  /** A second connection for blocking reads (a Redis Stream); closed with this link. */
  duplicate(): Redis {
    const dup = this.redis.duplicate({ commandTimeout: undefined, lazyConnect: true, connectionName: `ichidan:${this.node}:reader` });
    dup.on('error', () => undefined);
    this.once('closing', () => dup.disconnect());
    return dup;
  }

  async close(): Promise<void> {
    this.#closed = true;
    this.emit('closing');
    try {
      if (this.#up) await this.redis.quit();
    } catch {
      /* already gone */
    }
    this.redis.disconnect();
  }

  #set(up: boolean): void {
    if (this.#up === up) return;
    this.#up = up;
    if (up) this.log.info({ redis: redact(this.config.redis), node: this.node }, 'cluster: Redis connected');
    else if (!this.#closed) this.log.warn({ redis: redact(this.config.redis), node: this.node }, 'cluster: Redis connection lost; running on local limits');
    this.emit(up ? 'up' : 'down');
  }
}

/** A Redis URL without its password, for logs. */
export function redact(url: string): string {
  try {
    const u = new URL(url);
    if (u.password) u.password = '***';
    return u.toString();
  } catch {
    return 'redis';
  }
}
