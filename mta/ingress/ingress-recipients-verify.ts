/*
 * Recipient verification by probe: asks the mailbox server whether it would take mail for an
 * address with a real RCPT (Postfix's reject_unverified_recipient), and remembers the answer.
 *
 * The probe (LMTP, RFC 2033, or SMTP, RFC 5321) over the delivery stage's client
 * (delivery/smtp/smtp-connection.ts): greeting, LHLO (EHLO, HELO on a refused EHLO), MAIL FROM
 * the configured sender (the null sender by default), RCPT TO the address, RSET, QUIT. No DATA is
 * ever sent. The RCPT's 2xx is "known", its 5xx "unknown"; anything else (4xx, a refused
 * greeting, hello or MAIL, a connection that fails or runs past `timeout`) is "unavailable".
 * Non-ASCII addresses get SMTPUTF8 on MAIL when the server offers it (RFC 6531).
 * The cache: "known" for `positiveTtl`, "unknown" for `negativeTtl`, "unavailable" never; keyed by
 * the server and the address (case folded), at most `cacheSize` answers, the least recently used
 * dropped first. Probes for the same key at the same time share one connection and one answer.
 * In a cluster (cluster.redis), answers are shared: a node that has none asks Redis before it
 * probes and stores what its probes learn there with the same TTL, so one probe serves every node.
 * Redis away or slow is only a miss (queue/cluster/cluster-link.ts): the node probes by itself.
 * Takes: the `verify` settings of a rule (ingress-recipients-config.ts), the address. Gives: the
 * answer and where it came from. Network: TCP to `verify.host`:`verify.port`; the cluster's Redis.
 */
import { createHash } from 'node:crypto';
import type { Logger } from 'pino';
import type { ClusterLink } from '../../queue/cluster/cluster-link.js';
import { SmtpConnection, type WireLogger } from '../../delivery/smtp/smtp-connection.js';
import type { VerifyConfig } from './ingress-recipients-config.js';

export type ProbeAnswer = 'known' | 'unknown' | 'unavailable';

export interface VerifyResult {
  answer: ProbeAnswer;
  source: 'cache' | 'cluster' | 'probe';
}

/** Answers shared by the nodes of a cluster; a miss (or Redis away) is undefined. */
export interface SharedAnswers {
  get(key: string): Promise<{ answer: ProbeAnswer; ttlMs: number } | undefined>;
  set(key: string, answer: ProbeAnswer, ttlMs: number): Promise<void>;
}

/** The cluster's Redis as SharedAnswers: `<prefix>:rcpt:<sha256 of the key>`, expiring with the answer. */
export function redisAnswers(link: ClusterLink): SharedAnswers {
  const name = (key: string) => link.key('rcpt', createHash('sha256').update(key).digest('hex'));
  return {
    async get(key) {
      const got = await link.call(2, (r) => r.pipeline().get(name(key)).pttl(name(key)).exec());
      const answer = got?.[0]?.[1];
      const ttlMs = Number(got?.[1]?.[1]);
      if ((answer !== 'known' && answer !== 'unknown') || !(ttlMs > 0)) return undefined;
      return { answer, ttlMs };
    },
    async set(key, answer, ttlMs) {
      await link.call(1, (r) => r.set(name(key), answer, 'PX', ttlMs));
    },
  };
}

const quiet: WireLogger = { trace: () => undefined, debug: () => undefined, info: () => undefined, warn: () => undefined, error: () => undefined, fatal: () => undefined };

export function portOf(v: VerifyConfig): number {
  return v.port ?? (v.protocol === 'lmtp' ? 24 : 25);
}

/** One probe: the answer of the server at `v` for `address`. Never throws. */
export async function probe(v: VerifyConfig, address: string, helo: string): Promise<{ answer: ProbeAnswer; detail: string }> {
  const conn = new SmtpConnection({ address: v.host, port: portOf(v), connectTimeout: v.timeout, replyTimeout: v.timeout, logger: quiet });
  const timer = setTimeout(() => conn.close(), v.timeout);
  try {
    const refused = await conn.handshake({ name: helo, lmtp: v.protocol === 'lmtp', starttls: 'never', tls: {} });
    if (refused) return { answer: 'unavailable', detail: `${refused.step}: ${refused.reply.raw}` };
    const utf8 = /[^\x00-\x7f]/.test(address) || /[^\x00-\x7f]/.test(v.sender);
    if (utf8 && !conn.extensions.has('SMTPUTF8')) return { answer: 'unavailable', detail: 'the server does not offer SMTPUTF8' };
    const mail = await conn.command(`MAIL FROM:<${v.sender}>${utf8 ? ' SMTPUTF8' : ''}`);
    if (mail.code !== 250) return { answer: 'unavailable', detail: `MAIL: ${mail.raw}` };
    const rcpt = await conn.command(`RCPT TO:<${address}>`);
    await conn.command('RSET').catch(() => undefined);
    const answer: ProbeAnswer = rcpt.code >= 200 && rcpt.code < 300 ? 'known' : rcpt.code >= 500 ? 'unknown' : 'unavailable';
    return { answer, detail: `RCPT: ${rcpt.raw}` };
  } catch (err) {
    return { answer: 'unavailable', detail: (err as Error).message };
  } finally {
    clearTimeout(timer);
    if (!conn.ended) void conn.quit();
  }
}

export type ProbeFn = typeof probe;

/** The answers of the mailbox servers, for the life of the process (a reload keeps them). */
export class RecipientVerifier {
  readonly #cache = new Map<string, { answer: ProbeAnswer; until: number }>();
  readonly #pending = new Map<string, Promise<VerifyResult>>();

  constructor(
    private readonly log: Logger,
    private readonly count: (answer: ProbeAnswer) => void = () => undefined,
    private readonly run: ProbeFn = probe,
    private readonly clock: () => number = Date.now,
    private readonly shared: () => SharedAnswers | null = () => null,
  ) {}

  get size(): number {
    return this.#cache.size;
  }

  async verify(v: VerifyConfig, address: string, helo: string): Promise<VerifyResult> {
    const key = `${v.protocol}:${v.host}:${portOf(v)}:${v.sender}\n${address.toLowerCase()}`;
    const now = this.clock();
    const hit = this.#cache.get(key);
    if (hit && hit.until > now) {
      // Touched: the least recently used answers are the ones dropped.
      this.#cache.delete(key);
      this.#cache.set(key, hit);
      return { answer: hit.answer, source: 'cache' };
    }
    if (hit) this.#cache.delete(key);
    let pending = this.#pending.get(key);
    if (!pending) {
      pending = this.#learn(v, key, address, helo);
      this.#pending.set(key, pending);
      void pending.finally(() => this.#pending.delete(key));
    }
    return pending;
  }

  async #learn(v: VerifyConfig, key: string, address: string, helo: string): Promise<VerifyResult> {
    const shared = this.shared();
    const known = await shared?.get(key);
    if (known) {
      this.#keep(v, key, known.answer, Math.min(known.ttlMs, known.answer === 'known' ? v.positiveTtl : v.negativeTtl));
      return { answer: known.answer, source: 'cluster' };
    }
    const { answer, detail } = await this.run(v, address, helo);
    this.count(answer);
    const level = answer === 'unavailable' ? 'warn' : 'info';
    this.log[level]({ rcpt: address, server: `${v.host}:${portOf(v)}`, answer, detail }, 'recipient verified by probe');
    const ttl = answer === 'known' ? v.positiveTtl : answer === 'unknown' ? v.negativeTtl : 0;
    if (ttl > 0) {
      this.#keep(v, key, answer, ttl);
      // Not awaited: the client's RCPT does not wait for Redis (a failed write only costs another node a probe).
      void shared?.set(key, answer, ttl);
    }
    return { answer, source: 'probe' };
  }

  #keep(v: VerifyConfig, key: string, answer: ProbeAnswer, ttl: number): void {
    this.#cache.set(key, { answer, until: this.clock() + ttl });
    while (this.#cache.size > v.cacheSize) this.#cache.delete(this.#cache.keys().next().value!);
  }
}
