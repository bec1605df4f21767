/*
 * queue/ — the spool, the queue database, per-tenant lanes, retries, expiry and notices.
 *
 * Takes: an accepted message from the SMTP DATA path — its spool writer (the bytes, written
 *   once) and its envelope (sender, recipients each with its tenant, DSN parameters, the trace
 *   headers Ichidan adds).
 * Gives: `accept()` resolves only when the spool file and the queue record are durable (fsync;
 *   concurrent transactions share one commit), which is when the 250 may be sent. Then each
 *   (tenant × destination domain) lane hands jobs to `delivery/` and records every recipient's
 *   outcome; failures retry with exponential backoff and jitter until `queue.maxAge`, then bounce.
 * Network: none itself (delivery/ does the talking).
 * RFCs: 3464 (delivery status notifications), 3461 (NOTIFY, RET, ENVID, ORCPT).
 * Settings: dataDir, queue.*.
 */
import { join } from 'node:path';
import { Readable } from 'node:stream';
import type { Logger } from 'pino';
import type { Egress, OutboundMessage, RecipientOutcome } from '../delivery/index.js';
import type { Config } from '../mta/mta-config-schema.js';
import { buildNotice, readHeaderSection, wantsNotice, type NoticeAction } from './queue-bounce.js';
import { newQueueId } from './queue-id.js';
import { reconcile, type ReconcileReport } from './queue-reconcile.js';
import { Scheduler, type Job } from './queue-scheduler.js';
import { Spool, type SpoolWriter } from './queue-spool.js';
import { QueueStore, type MessageRow, type NewRecipient, type RecipientRow, type RecipientUpdate } from './queue-store.js';

export { newQueueId } from './queue-id.js';
export type { SpoolWriter } from './queue-spool.js';
export type { NewRecipient } from './queue-store.js';

/** Largest original returned whole in a bounce; larger ones come back as headers only. */
const RETURN_FULL_LIMIT = 50_000;
const SWEEP_INTERVAL_MS = 250;
/** Bytes of recently accepted small messages kept in memory, saving a file read at their first delivery. */
const RECENT_BODIES_BUDGET = 16 * 1024 * 1024;

export interface AcceptedEnvelope {
  sender: string;
  recipients: NewRecipient[];
  ret: string | null;
  envid: string | null;
  smtputf8: boolean;
  body8bit: boolean;
  client: string;
  helo: string;
  authUser: string | null;
  listener: string;
  /** Header lines Ichidan adds in front of the spool file (Received, ...), CRLF-terminated. */
  trace: string;
}

export function retryDelay(config: Config['queue'], attempts: number, random = Math.random): number {
  const base = Math.min(config.retryMax, config.retryInitial * config.retryFactor ** Math.max(0, attempts - 1));
  const jitter = 1 + config.retryJitter * (2 * random() - 1);
  return Math.max(1, Math.round(base * jitter));
}

function messageStream(trace: string, body: Readable): Readable {
  return Readable.from((async function* () {
    if (trace) yield Buffer.from(trace, 'utf8');
    yield* body;
  })(), { objectMode: false });
}

export class Queue {
  readonly spool: Spool;
  readonly store: QueueStore;
  readonly scheduler: Scheduler;
  #sweepTimer: NodeJS.Timeout | null = null;
  /** id → body of recently accepted small messages (insertion order = eviction order). */
  readonly #recent = new Map<string, Buffer>();
  #recentBytes = 0;
  #sweeping = false;
  #egress: Egress;

  private constructor(private config: Config, egress: Egress, private readonly log: Logger) {
    this.spool = new Spool(join(config.dataDir, 'spool'), config.queue.fsync);
    this.store = new QueueStore(join(config.dataDir, 'queue.db'), config.queue.fsync, config.queue.commitWindow);
    this.#egress = egress;
    this.scheduler = new Scheduler(
      { concurrency: config.queue.concurrency, laneConcurrency: config.queue.laneConcurrency },
      (job) => this.#attempt(job),
    );
  }

  /** Opens spool and database, reconciles them, and schedules every open recipient. */
  static async open(config: Config, egress: Egress, log: Logger): Promise<{ queue: Queue; report: ReconcileReport }> {
    const spool = new Spool(join(config.dataDir, 'spool'), config.queue.fsync);
    await spool.init();
    const queue = new Queue(config, egress, log);
    const report = await reconcile(queue.spool, queue.store);
    for (const c of report.corrupt) log.warn({ qid: c.id, reason: c.reason }, 'queue entry set aside as corrupt');
    queue.#loadOpen();
    queue.#sweepTimer = setInterval(() => void queue.#sweep(), SWEEP_INTERVAL_MS);
    queue.#sweepTimer.unref();
    return { queue, report };
  }

  /** A new config snapshot: new limits and a new egress for the attempts that start from now on. */
  reconfigure(config: Config, egress: Egress): void {
    this.config = config;
    this.#egress = egress;
    this.scheduler.setLimits({ concurrency: config.queue.concurrency, laneConcurrency: config.queue.laneConcurrency });
  }

  async createWriter(): Promise<SpoolWriter> {
    return this.spool.createWriter(newQueueId());
  }

  /**
   * Makes an accepted message durable and queues it; resolves when the 250 may be sent. On failure
   * the spool file is removed and nothing of the message remains.
   */
  async accept(writer: SpoolWriter, env: AcceptedEnvelope): Promise<string> {
    const receivedAt = Date.now();
    let ids: number[] = [];
    try {
      await writer.commit();
      await this.store.enqueue(() => {
        ids = this.store.insertMessage({ ...env, id: writer.id, size: writer.bytes, receivedAt, kind: 'mail' });
      });
    } catch (err) {
      await writer.discard();
      throw err;
    }
    if (writer.kept) this.#remember(writer.id, Buffer.concat(writer.kept));
    this.#schedule(writer.id, env.recipients.map((r, i) => ({ ...r, id: ids[i] })), receivedAt);
    return writer.id;
  }

  #remember(id: string, body: Buffer): void {
    this.#recent.set(id, body);
    this.#recentBytes += body.length;
    for (const [oldId, old] of this.#recent) {
      if (this.#recentBytes <= RECENT_BODIES_BUDGET) break;
      this.#recent.delete(oldId);
      this.#recentBytes -= old.length;
    }
  }

  #forget(id: string): void {
    const body = this.#recent.get(id);
    if (!body) return;
    this.#recent.delete(id);
    this.#recentBytes -= body.length;
  }

  /** The message as delivered: Ichidan's trace headers, then the body from memory or the spool file. */
  #open(msg: MessageRow): Readable {
    const body = this.#recent.get(msg.id);
    return messageStream(msg.trace, body ? Readable.from([body]) : this.spool.read(msg.id));
  }

  /** Held recipients back into the queue (by tenant and/or domain); returns how many. */
  async release(tenant: string | null, domain: string | null): Promise<number> {
    let n = 0;
    await this.store.enqueue(() => { n = this.store.release(tenant, domain, Date.now()); });
    if (n > 0) this.#loadOpen();
    return n;
  }

  /** Stops dispatching, waits up to `graceMs` for attempts in flight, then closes the database. */
  async close(graceMs = 10_000): Promise<void> {
    this.scheduler.stop();
    if (this.#sweepTimer) clearInterval(this.#sweepTimer);
    const until = Date.now() + graceMs;
    while ((this.scheduler.active > 0 || this.#sweeping) && Date.now() < until) await new Promise((r) => setTimeout(r, 20));
    this.store.close();
  }

  #schedule(messageId: string, recipients: Array<{ id: number; tenant: string; domain: string }>, due: number): void {
    const jobs = new Map<string, Job>();
    for (const r of recipients) {
      const key = `${r.tenant}\u0000${r.domain}`;
      const job = jobs.get(key);
      if (job) job.recipientIds.push(r.id);
      else jobs.set(key, { messageId, tenant: r.tenant, domain: r.domain, recipientIds: [r.id], due });
    }
    for (const job of jobs.values()) this.scheduler.add(job);
  }

  #loadOpen(): void {
    const byMessage = new Map<string, RecipientRow[]>();
    const running = this.#inFlight;
    for (const r of this.store.openRecipients()) {
      if (running.has(r.id)) continue;
      const list = byMessage.get(r.message_id);
      if (list) list.push(r); else byMessage.set(r.message_id, [r]);
    }
    for (const [id, rows] of byMessage) {
      const lanes = new Map<string, RecipientRow[]>();
      for (const r of rows) {
        const key = `${r.tenant}\u0000${r.domain}\u0000${r.next_attempt}`;
        const l = lanes.get(key);
        if (l) l.push(r); else lanes.set(key, [r]);
      }
      for (const group of lanes.values()) {
        this.#schedule(id, group.map((r) => ({ id: r.id, tenant: r.tenant, domain: r.domain })), group[0].next_attempt);
      }
    }
  }

  /** Recipient ids with an attempt running now (so a reload of open recipients skips them). */
  readonly #inFlight = new Set<number>();

  async #attempt(job: Job): Promise<void> {
    const msg = this.store.message(job.messageId);
    if (!msg || msg.state !== 'active') return;
    const wanted = new Set(job.recipientIds);
    const rows = this.store.recipientsOf(job.messageId).filter((r) => wanted.has(r.id) && r.state === 'queued' && !this.#inFlight.has(r.id));
    if (rows.length === 0) return;
    for (const r of rows) this.#inFlight.add(r.id);
    try {
      await this.#deliverRows(job, msg, rows);
    } catch (err) {
      this.log.error({ err, qid: msg.id }, 'delivery attempt failed inside the queue; retrying later');
      const due = Date.now() + retryDelay(this.config.queue, 1);
      this.scheduler.add({ ...job, recipientIds: rows.map((r) => r.id), due });
    } finally {
      for (const r of rows) this.#inFlight.delete(r.id);
    }
  }

  async #deliverRows(job: Job, msg: MessageRow, rows: RecipientRow[]): Promise<void> {
    const outbound: OutboundMessage = {
      sender: msg.sender,
      recipients: rows.map((r) => ({ id: r.id, address: r.address, notify: r.notify, orcpt: r.orcpt })),
      size: msg.size + Buffer.byteLength(msg.trace),
      ret: msg.ret,
      envid: msg.envid,
      body8bit: msg.body8bit === 1,
      open: () => this.#open(msg),
    };
    const result = await this.#egress.deliver(job.domain, outbound);
    const now = Date.now();
    const q = this.config.queue;

    if (result.kind === 'hold') {
      await this.store.enqueue(() => {
        this.store.updateRecipients(msg.id, rows.map((r) => ({
          id: r.id, state: 'held', nextAttempt: now, code: null, status: null, reply: 'held by route', host: null, attempted: false,
        })), now);
      });
      this.log.info({ qid: msg.id, tenant: job.tenant, domain: job.domain, recipients: rows.length }, 'held');
      return;
    }

    const byId = new Map<number, RecipientOutcome>(result.outcomes.map((o) => [o.id, o]));
    const updates: RecipientUpdate[] = [];
    const failed: RecipientRow[] = [];
    const delayed: RecipientRow[] = [];
    const retry: number[] = [];
    let nextDue = Infinity;
    const expiresAt = msg.received_at + q.maxAge;

    for (const r of rows) {
      const o = byId.get(r.id) ?? { id: r.id, verdict: 'deferred', code: 451, status: '4.4.2', reply: '451 4.4.2 no outcome reported', host: job.domain };
      const base = { id: r.id, code: o.code, status: o.status, reply: o.reply, host: o.host, attempted: true };
      const after = { ...r, attempts: r.attempts + 1, last_code: o.code, last_status: o.status, last_reply: o.reply, last_host: o.host, updated_at: now };
      if (o.verdict === 'delivered') {
        updates.push({ ...base, state: 'delivered', nextAttempt: now });
      } else if (o.verdict === 'bounced' || now >= expiresAt) {
        const reply = o.verdict === 'bounced' ? o.reply : `${o.reply} (gave up: in the queue longer than queue.maxAge)`;
        updates.push({ ...base, reply, state: 'bounced', nextAttempt: now });
        if (wantsNotice(msg, r, 'failed')) failed.push({ ...after, last_reply: reply });
      } else {
        const due = Math.min(now + retryDelay(q, r.attempts + 1), expiresAt);
        const warn = q.delayWarning > 0 && r.warned === 0 && now - msg.received_at >= q.delayWarning && wantsNotice(msg, r, 'delayed');
        updates.push({ ...base, state: 'queued', nextAttempt: due, warned: warn });
        if (warn) delayed.push(after);
        retry.push(r.id);
        nextDue = Math.min(nextDue, due);
      }
      this.log.info({ qid: msg.id, tenant: r.tenant, rcpt: r.address, verdict: o.verdict, status: o.status, reply: o.reply, host: o.host, attempt: r.attempts + 1, delay: now - msg.received_at }, 'delivery attempt');
    }

    const notices: Array<Awaited<ReturnType<Queue['writeNotice']>>> = [];
    if (failed.length > 0) notices.push(await this.writeNotice(msg, failed, 'failed', now));
    if (delayed.length > 0) notices.push(await this.writeNotice(msg, delayed, 'delayed', now));
    const noticeIds: number[][] = [];
    try {
      await this.store.enqueue(() => {
        this.store.updateRecipients(msg.id, updates, now);
        for (const n of notices) noticeIds.push(this.store.insertMessage(n.message));
      });
    } catch (err) {
      for (const n of notices) await n.writer.discard();
      throw err;
    }
    notices.forEach((n, i) => this.#schedule(n.message.id, n.message.recipients.map((r, j) => ({ ...r, id: noticeIds[i][j] })), now));
    if (retry.length > 0) this.scheduler.add({ ...job, recipientIds: retry, due: nextDue });
  }

  private async writeNotice(msg: MessageRow, recipients: RecipientRow[], action: NoticeAction, now: number) {
    const returnFull = msg.size <= RETURN_FULL_LIMIT;
    const parts = buildNotice({ hostname: this.config.hostname, message: msg, recipients, action, now, willRetryUntil: msg.received_at + this.config.queue.maxAge }, returnFull);
    const writer = await this.createWriter();
    try {
      writer.write(parts.head);
      const original = this.#open(msg);
      if (parts.returnBody) {
        for await (const chunk of original) if (!writer.write(chunk)) await new Promise((r) => writer.once('drain', r));
      } else {
        writer.write(await readHeaderSection(original));
      }
      writer.write(parts.tail);
      await writer.commit();
    } catch (err) {
      await writer.discard();
      throw err;
    }
    const domain = msg.sender.slice(msg.sender.lastIndexOf('@') + 1).toLowerCase();
    const tenant = recipients[0].tenant;
    return {
      writer,
      message: {
        id: writer.id, size: writer.bytes, sender: '', receivedAt: now, trace: '', ret: null, envid: null,
        smtputf8: msg.smtputf8 === 1, body8bit: true, client: '', helo: '', authUser: null, listener: 'notice', kind: 'dsn' as const,
        recipients: [{ tenant, address: msg.sender, domain, orcpt: null, notify: 'NEVER' }],
      },
    };
  }

  /** Removes finished messages: spool files first, then their rows. */
  async #sweep(): Promise<void> {
    if (this.#sweeping) return;
    this.#sweeping = true;
    try {
      const ids = this.store.doneMessages(2000);
      if (ids.length === 0) return;
      for (const id of ids) this.#forget(id);
      await Promise.all(ids.map((id) => this.spool.remove(id)));
      await this.store.enqueue(() => { for (const id of ids) this.store.deleteMessage(id); });
    } catch (err) {
      this.log.error({ err }, 'queue sweep failed');
    } finally {
      this.#sweeping = false;
    }
  }
}
