/*
 * Message rates shared by a cluster's nodes (a site's `messageRate` per source address, a tenant's
 * `messagesPerHour`): a GCRA in Redis (cluster-scripts.ts), of which a node takes up to a fifth of
 * a second's worth of messages at once and spends them locally, so a steady flow asks Redis a few
 * times a second whatever its rate. While Redis is away each node runs a bucket of its own at its
 * equal part of the rate. Asked synchronously by the gate (cluster-gate.ts); when a rate says not
 * now, the scheduler is woken when it may say yes.
 * Settings: delivery.site(s).messageRate, tenants.<name>.egress.messagesPerHour, cluster.fallbackNodes.
 */
import type { ClusterLink } from './cluster-link.js';
import { GCRA } from './cluster-scripts.js';

interface Bucket {
  tokens: number;
  asking: boolean;
  retryAt: number;
  /** The local bucket used while Redis is away. */
  refilledAt: number;
}

export interface RatesDeps {
  /** Whether Redis decides now (false: the local fallback). */
  shared(): boolean;
  /** How many nodes share each rate while Redis is away. */
  nodes(): number;
  wake(): void;
  wakeIn(ms: number): void;
}

export interface Rate {
  count: number;
  perMs: number;
}

const BATCH_MS = 200;
const MAX_BATCH = 50;
const RETRY_MS = 100;

export class SharedRates {
  readonly #buckets = new Map<string, Bucket>();
  /** Messages let through on the local fallback (for the metrics). */
  fallbackDecisions = 0;

  constructor(private readonly link: ClusterLink, private readonly deps: RatesDeps) {
    link.redis.defineCommand('ichidanRate', { numberOfKeys: 1, lua: GCRA });
  }

  /** Takes one message of the rate named `key` ("site\0<site>\0<source>" or "tenant\0<name>"); false: not now. */
  take(key: string, rate: Rate): boolean {
    let bucket = this.#buckets.get(key);
    const now = Date.now();
    if (!bucket) this.#buckets.set(key, (bucket = { tokens: 0, asking: false, retryAt: 0, refilledAt: now }));
    const shared = this.deps.shared();
    if (!shared) {
      // An equal part of the rate, in a bucket of this node's own.
      this.fallbackDecisions++;
      const count = rate.count / this.deps.nodes();
      bucket.tokens = Math.min(Math.max(1, count), bucket.tokens + (now - bucket.refilledAt) * count / rate.perMs);
      bucket.refilledAt = now;
    }
    if (bucket.tokens >= 1) {
      bucket.tokens -= 1;
      return true;
    }
    if (shared && !bucket.asking && now >= bucket.retryAt) void this.#ask(key, bucket, rate);
    else if (!shared) this.deps.wakeIn(Math.ceil((1 - bucket.tokens) * rate.perMs * this.deps.nodes() / rate.count));
    return false;
  }

  async #ask(key: string, bucket: Bucket, rate: Rate): Promise<void> {
    bucket.asking = true;
    const interval = rate.perMs / rate.count;
    const batch = Math.max(1, Math.min(MAX_BATCH, Math.floor(BATCH_MS / interval)));
    const [kind, a, b] = key.split('\u0000');
    const redisKey = kind === 'site' ? this.link.siteKey(a, 'rate', b || 'default') : this.link.key('rate', kind, a);
    const answer = await this.link.call(1, (r) => (r as unknown as RateCommand).ichidanRate(redisKey, interval, Math.max(0, rate.perMs - interval), batch));
    bucket.asking = false;
    if (answer && answer[0] > 0) {
      bucket.tokens += answer[0];
      this.deps.wake();
      return;
    }
    const wait = answer ? Math.max(10, answer[1]) : RETRY_MS;
    bucket.retryAt = Date.now() + wait;
    this.deps.wakeIn(wait);
  }
}

interface RateCommand {
  ichidanRate(...args: Array<string | number>): Promise<[number, number]>;
}
