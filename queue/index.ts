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
 * Also stores the transcripts of delivery's sessions (delivery.transcripts.*), pruned hourly.
 * Settings: dataDir, queue.*, delivery.transcripts.retention.
 */
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { Logger } from 'pino';
import type { Egress, OutboundMessage, RecipientOutcome, TranscriptChunk, Via } from '../delivery/index.js';
import { EngineStats, type RunRecord, type ScanRecord } from '../engines/engines-records.js';
import type { QueueConfig } from './queue-config.js';
import { buildNotice, readHeaderSection, wantsNotice, type NoticeAction } from './queue-bounce.js';
import { HeaderStrip, parseStripRule, type StripRule } from './queue-headers.js';
import { newQueueId } from '../base/base-queue-id.js';
import { reconcile, type ReconcileReport } from './queue-reconcile.js';
import { CorruptEntries } from './queue-corrupt-entries.js';
import { Scheduler, type Dispatch, type Job, type SiteRef, type Source, type TenantPolicy } from './queue-scheduler.js';
import { openDomains, type RecipientSelector } from './queue-store-egress.js';
import { PendingOutcomes } from './queue-pending.js';
import { SpaceGuard } from './queue-space.js';
import { EgressControl } from './queue-egress-control.js';
import { Spool, type SpoolWriter } from './queue-spool.js';
import { QueueStore, type MessageRow, type NewMessage, type RecipientRow, type RecipientUpdate, type WriteOp } from './queue-store.js';

export { newQueueId } from '../base/base-queue-id.js';
export type { EgressEvent } from './queue-store-egress.js';
export type { HoldRequest } from './queue-egress-control.js';
export type { PairView } from './queue-scheduler.js';
export type { SpoolWriter } from './queue-spool.js';
export type { NewRecipient } from './queue-store.js';

/** Largest original returned whole in a bounce; larger ones come back as headers only. */
const RETURN_FULL_LIMIT = 50_000;
const SWEEP_INTERVAL_MS = 250;
/** Bytes of recently accepted small messages kept in memory, saving a file read at their first delivery. */
const RECENT_BODIES_BUDGET = 16 * 1024 * 1024;
/** Engine statistics are written this often (and at close); scan records and session transcripts past retention pruned hourly. */
const STATS_FLUSH_MS = 10_000;
const PRUNE_INTERVAL_MS = 3_600_000;
/** Session transcripts wait at most this long, or until this many, to be written together. */
const TRANSCRIPT_FLUSH_MS = 500;
const TRANSCRIPT_BATCH = 500;

/** What the DATA path hands over: the queue record less what the queue assigns itself. */
export type AcceptedEnvelope = Omit<NewMessage, 'id' | 'size' | 'receivedAt' | 'kind'>;

interface Notice {
  writer: SpoolWriter;
  message: NewMessage;
  action: NoticeAction;
}

export function retryDelay(config: QueueConfig['queue'], attempts: number, random = Math.random): number {
  const base = Math.min(config.retryMax, config.retryInitial * config.retryFactor ** Math.max(0, attempts - 1));
  const jitter = 1 + config.retryJitter * (2 * random() - 1);
  return Math.max(1, Math.round(base * jitter));
}

/**
 * Trace headers then the body; the body is opened only when read and always closed. With a
 * strip rule, the body's own copies of the fields Ichidan added are left out (queue-headers.ts).
 */
function messageStream(trace: string, openBody: () => Readable, strip: StripRule | null): Readable {
  return Readable.from((async function* () {
    if (trace) yield Buffer.from(trace, 'utf8');
    const raw = openBody();
    const body = strip ? raw.pipe(new HeaderStrip(strip)) : raw;
    if (strip) raw.on('error', (err) => body.destroy(err));
    try {
      yield* body;
    } finally {
      raw.destroy();
      body.destroy();
    }
  })(), { objectMode: false });
}

const DEFAULT_SOURCE: Source = { address: null, helo: null };
const DEFAULT_POLICY: TenantPolicy = { weight: 1, sources: [DEFAULT_SOURCE] };

/** Each configured tenant's share, caps and source addresses, as the scheduler reads them. */
function tenantPolicies(config: QueueConfig): Map<string, TenantPolicy> {
  const out = new Map<string, TenantPolicy>();
  for (const [name, t] of Object.entries(config.tenants)) {
    const pool = t.egress.sourcePool ? config.delivery.sourcePools[t.egress.sourcePool] : undefined;
    out.set(name, {
      weight: t.egress.weight,
      concurrency: t.egress.concurrency,
      messagesPerHour: t.egress.messagesPerHour,
      suspended: t.egress.suspended,
      sources: pool ? pool.map((p) => ({ address: p.address, helo: p.helo ?? null })) : [DEFAULT_SOURCE],
    });
  }
  return out;
}

export class Queue {
  readonly spool: Spool;
  readonly store: QueueStore;
  readonly scheduler: Scheduler;
  readonly control: EgressControl;
  readonly space: SpaceGuard;
  /** Outcomes the database could not take yet: their recipients are not attempted again meanwhile. */
  readonly pendingOutcomes: PendingOutcomes;
  /** Entries set aside at startup: listed, requeued and deleted by an operator, leftovers expired. */
  readonly corrupt: CorruptEntries;
  #policies = new Map<string, TenantPolicy>();
  #sweepTimer: NodeJS.Timeout | null = null;
  #transcripts: TranscriptChunk[] = [];
  #transcriptTimer: NodeJS.Timeout | null = null;
  /** id → body of recently accepted small messages (insertion order = eviction order). */
  readonly #recent = new Map<string, Buffer>();
  #recentBytes = 0;
  #sweeping = false;
  #egress: Egress;
  readonly #stats = new EngineStats();
  #statsFlushedAt = Date.now();
  #prunedAt = 0;
  #leftoversAt = Date.now();

  private constructor(private config: QueueConfig, egress: Egress, private readonly log: Logger) {
    this.spool = new Spool(join(config.dataDir, 'spool'), config.queue.fsync);
    this.store = new QueueStore(join(config.dataDir, 'queue.db'), config.queue.fsync, config.queue.commitWindow);
    this.#egress = egress;
    this.scheduler = new Scheduler(
      { concurrency: config.queue.concurrency, laneConcurrency: config.queue.laneConcurrency },
      {
        run: (dispatch) => this.#attempt(dispatch),
        resolveSite: (domain) => this.#egress.site(domain),
        tenantPolicy: (tenant) => this.#policies.get(tenant) ?? DEFAULT_POLICY,
      },
    );
    this.#policies = tenantPolicies(config);
    this.control = new EgressControl(config, this.scheduler, this.store, log);
    this.space = new SpaceGuard([this.spool.dir, config.dataDir], join(config.dataDir, 'reserve'), config, log);
    this.store.onFull = () => this.space.release();
    // The room a released reserve gave back is for outcomes and removals, not for new records.
    this.store.refuseNewMail = () => this.space.released;
    this.corrupt = new CorruptEntries(this.spool, this.store, log, (rows) => this.#scheduleRows(rows), () => this.config.queue.leftoverRetention);
    this.pendingOutcomes = new PendingOutcomes(this.store, log, (id, recipientIds) => {
      const ids = new Set(recipientIds);
      this.#scheduleRows(this.store.recipientsOf(id).filter((r) => ids.has(r.id) && r.state === 'queued'));
    });
  }

  /** Opens spool and database, reconciles them, and schedules every open recipient. */
  static async open(config: QueueConfig, egress: Egress, log: Logger): Promise<{ queue: Queue; report: ReconcileReport }> {
    const queue = new Queue(config, egress, log);
    await queue.spool.init();
    await queue.space.start();
    const report = await reconcile(queue.spool, queue.store);
    for (const c of report.corrupt) log.warn({ qid: c.id, kind: c.kind, reason: c.reason }, 'queue entry set aside as corrupt');
    if (report.deferred > 0) log.error({ entries: report.deferred }, 'no room to record what reconciliation found: those entries are left as they are until the next start');
    await queue.corrupt.removeLeftovers(Date.now()).catch((err) => log.error({ err }, 'could not remove never-acknowledged leftovers'));
    const restored = queue.control.restore();
    if (restored > 0) log.info({ events: restored }, 'egress holds and pauses still in force restored');
    queue.#loadOpen();
    queue.#stats.load(queue.store.engineStatsSince(new Date(Date.now() - 86_400_000).toISOString().slice(0, 10)));
    queue.#sweepTimer = setInterval(() => void queue.#sweep(), SWEEP_INTERVAL_MS);
    queue.#sweepTimer.unref();
    return { queue, report };
  }

  /** A new config snapshot: new limits and a new egress for the attempts that start from now on. */
  reconfigure(config: QueueConfig, egress: Egress): void {
    this.config = config;
    this.#egress = egress;
    this.#policies = tenantPolicies(config);
    this.control.reconfigure(config);
    this.space.reconfigure(config);
    for (const site of this.scheduler.knownSites()) this.scheduler.updateSite(egress.sites.limits(site));
    this.scheduler.setLimits({ concurrency: config.queue.concurrency, laneConcurrency: config.queue.laneConcurrency });
  }

  /** The egress of the current config snapshot. */
  get egress(): Egress {
    return this.#egress;
  }

  /**
   * A turn for a live session (the transparent proxy) at a site, taken through the scheduler like
   * a delivery: the same caps, fairness and blocks. Resolves with the source address to connect
   * from and the function that gives the turn back; rejects after `waitMs` without one, or when
   * `leave` aborts (the scheduler's turn, when it comes, then goes straight back).
   */
  acquireLive(tenant: string, site: SiteRef, waitMs: number, leave?: AbortSignal): Promise<{ site: string; source: Source; release: () => void }> {
    return new Promise((resolve, reject) => {
      let state: 'waiting' | 'given' | 'gave up' = 'waiting';
      const left = () => giveUp('the session ended while waiting for a turn');
      const giveUp = (why: string) => {
        if (state !== 'waiting') return;
        state = 'gave up';
        clearTimeout(timer);
        leave?.removeEventListener('abort', left);
        reject(new Error(why));
      };
      const timer = setTimeout(() => giveUp(`no turn at ${site.key} within ${waitMs} ms (the site is at its limit, paused or held)`), waitMs);
      if (leave?.aborted) return left();
      // A session asks for a turn per transaction: each wait takes its listener off again.
      leave?.addEventListener('abort', left, { once: true });
      this.scheduler.add({
        messageId: '', tenant, domain: site.key, recipientIds: [], due: 0,
        live: {
          site,
          cancelled: () => state === 'gave up',
          run: (d) => {
            // Dispatched after its client gave up: the turn goes straight back.
            if (state !== 'waiting') return Promise.resolve();
            state = 'given';
            clearTimeout(timer);
            leave?.removeEventListener('abort', left);
            return new Promise<void>((release) => resolve({ site: d.site, source: d.source, release: () => release() }));
          },
        },
      });
    });
  }

  /** Holds recipients (one message's, a tenant's, a site's) so they stay queued until released; resolves with how many. */
  async holdRecipients(select: RecipientSelector): Promise<number> {
    const [n] = await this.store.write([{ op: 'holdRecipients', select, now: Date.now() }]) as [number];
    return n;
  }

  /**
   * Whether new mail of `declaredSize` bytes is to be refused (452 4.3.1) because the queue's
   * filesystems are below `queue.minFree`.
   */
  lowOnSpace(declaredSize = 0): boolean {
    return this.space.low(declaredSize);
  }

  /**
   * Removes recipients from the queue without a notice (as postsuper -d does); resolves with how
   * many. It may use the space reserve: a purge is how an operator makes room on a full disk.
   */
  async purge(select: RecipientSelector, reason: string): Promise<number> {
    const [n] = await this.store.write([{ op: 'purgeRecipients', select, now: Date.now(), reason }], { essential: true }) as [number];
    if (n > 0) this.log.warn({ ...select, recipients: n, reason }, 'purged');
    return n;
  }

  /** The destination domains with queued or held mail that belong to a site (looked up as delivery would). */
  async domainsOfSite(site: string): Promise<string[]> {
    const domains = openDomains(this.store.db);
    const sites = await Promise.all(domains.map((d) => Promise.resolve(this.#egress.site(d)).then((s) => s.key, () => null)));
    return domains.filter((_, i) => sites[i] === site);
  }

  /** A spool file for new mail: its writes stop (ENOSPC, so 452) where they would go below queue.minFree. */
  async createWriter(): Promise<SpoolWriter> {
    return this.spool.createWriter(newQueueId(), (bytes) => this.space.take(bytes));
  }

  /**
   * Makes an accepted message durable and queues it; resolves when the 250 may be sent. On failure
   * the spool file is removed and nothing of the message remains.
   */
  async accept(writer: SpoolWriter, env: AcceptedEnvelope, expectedBytes: number, scan?: ScanRecord): Promise<string> {
    const receivedAt = Date.now();
    let ids: number[] = [];
    try {
      await writer.commit(expectedBytes);
      const unit: WriteOp[] = [{ op: 'insertMessage', message: { ...env, id: writer.id, size: writer.bytes, receivedAt, kind: 'mail' } }];
      if (scan) unit.push({ op: 'recordScans', records: [scan] });
      [ids] = await this.store.write(unit) as [number[]];
    } catch (err) {
      await writer.discard();
      throw err;
    }
    if (scan) this.#stats.add(scan);
    // Quarantined: stored durably, held until an operator releases it.
    if (env.quarantine) return writer.id;
    // A copy, not the received chunks: those may be views into much larger socket buffers.
    if (writer.kept) this.#remember(writer.id, Buffer.concat(writer.kept));
    this.#schedule(writer.id, env.recipients.map((r, i) => ({ ...r, id: ids[i], due: receivedAt })));
    return writer.id;
  }

  /** Runs of shadow engines that ended after the verdict: added to the message's record and the statistics. */
  recordLateRuns(scan: ScanRecord, runs: RunRecord[]): void {
    this.#stats.addLate(scan, runs);
    this.store.write([{ op: 'appendScanRuns', queueId: scan.queueId, runs }]).catch((err) => this.log.error({ err, qid: scan.queueId }, 'could not record late scans'));
  }

  /** Session transcripts from delivery/ (and the proxy): stored without holding delivery up; a failed write is logged. */
  readonly recordTranscript = (chunk: TranscriptChunk): void => {
    this.#transcripts.push(chunk);
    if (this.#transcripts.length >= TRANSCRIPT_BATCH) void this.#flushTranscripts();
    else if (!this.#transcriptTimer) {
      this.#transcriptTimer = setTimeout(() => void this.#flushTranscripts(), TRANSCRIPT_FLUSH_MS);
      this.#transcriptTimer.unref();
    }
  };

  /**
   * Transcripts are written in batches: many sessions' lines share their database pages and one
   * commit, instead of each message's few lines rewriting whole pages of their own.
   */
  #flushTranscripts(): Promise<void> {
    if (this.#transcriptTimer) clearTimeout(this.#transcriptTimer);
    this.#transcriptTimer = null;
    const chunks = this.#transcripts.splice(0);
    if (chunks.length === 0) return Promise.resolve();
    return this.store.write(chunks.map((chunk) => ({ op: 'recordTranscript' as const, chunk })))
      .then(() => undefined, (err) => this.log.error({ err, sessions: chunks.length }, 'could not record session transcripts'));
  }

  /** Records the scan of a message that was refused (accepted ones are recorded by `accept`). */
  recordScan(scan: ScanRecord): void {
    this.#stats.add(scan);
    this.store.write([{ op: 'recordScans', records: [scan] }]).catch((err) => this.log.error({ err, qid: scan.queueId }, 'could not record a scan'));
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
    return messageStream(msg.trace, () => (body ? Readable.from([body]) : this.spool.read(msg.id)), parseStripRule(msg.strip));
  }

  /** Held recipients back into the queue (by tenant and/or domain); returns how many. */
  async release(tenant: string | null, domain: string | null): Promise<number> {
    const [released] = await this.store.write([{ op: 'release', tenant, domain, now: Date.now() }]) as [RecipientRow[]];
    this.#scheduleRows(released);
    return released.length;
  }

  /** A quarantined (or otherwise held) message's recipients back into the queue; returns how many. */
  async releaseMessage(id: string): Promise<number> {
    const [released] = await this.store.write([{ op: 'releaseMessage', id, now: Date.now() }]) as [RecipientRow[]];
    this.#scheduleRows(released);
    if (released.length > 0) this.log.info({ qid: id, recipients: released.length }, 'released');
    return released.length;
  }

  /** Stops dispatching, waits up to `graceMs` for attempts in flight, then closes the database. */
  async close(graceMs = 10_000): Promise<void> {
    this.scheduler.stop();
    if (this.#sweepTimer) clearInterval(this.#sweepTimer);
    const until = Date.now() + graceMs;
    while ((this.scheduler.active > 0 || this.#sweeping) && Date.now() < until) await new Promise((r) => setTimeout(r, 20));
    // Idle sessions QUIT while the database is still open, so their transcripts end complete.
    await this.#egress.closeIdleSessions();
    await this.#flushTranscripts();
    await this.#flushStats().catch((err) => this.log.error({ err }, 'could not write engine statistics'));
    await this.pendingOutcomes.close();
    this.space.stop();
    await this.store.close();
    await this.spool.close();
  }

  /** One job per lane (tenant × domain) and due time for these recipients of one message. */
  #schedule(messageId: string, recipients: Array<{ id: number; tenant: string; domain: string; due: number }>): void {
    const jobs = new Map<string, Job>();
    for (const r of recipients) {
      const key = `${r.tenant}\u0000${r.domain}\u0000${r.due}`;
      const job = jobs.get(key);
      if (job) job.recipientIds.push(r.id);
      else jobs.set(key, { messageId, tenant: r.tenant, domain: r.domain, recipientIds: [r.id], due: r.due });
    }
    for (const job of jobs.values()) this.scheduler.add(job);
  }

  /** Schedules stored recipient rows, each at its next attempt. */
  #scheduleRows(rows: RecipientRow[]): void {
    const byMessage = new Map<string, RecipientRow[]>();
    for (const r of rows) {
      const list = byMessage.get(r.message_id);
      if (list) list.push(r); else byMessage.set(r.message_id, [r]);
    }
    for (const [id, list] of byMessage) this.#schedule(id, list.map((r) => ({ ...r, due: r.next_attempt })));
  }

  #loadOpen(): void {
    this.#scheduleRows(this.store.openRecipients());
  }

  /** Recipients ("message id/recipient number") with an attempt running now. */
  readonly #inFlight = new Set<string>();

  async #attempt(dispatch: Dispatch): Promise<void> {
    const { job } = dispatch;
    let rows: RecipientRow[] = [];
    let retry: Array<{ id: number; tenant: string; domain: string; due: number }> = [];
    try {
      const msg = this.store.message(job.messageId);
      if (!msg || msg.state !== 'active') return;
      const wanted = new Set(job.recipientIds);
      const now = Date.now();
      // A row that is not due belongs to another, later job; one already in flight to the running one.
      rows = this.store.recipientsOf(job.messageId)
        .filter((r) => wanted.has(r.id) && r.state === 'queued' && r.next_attempt <= now + 50 && !this.#inFlight.has(`${r.message_id}/${r.id}`)
          && !this.pendingOutcomes.owes(r.message_id, r.id));
      if (rows.length === 0) return;
      // The job was placed under a site its domain no longer belongs to (a reload named a new site,
      // or its lookup had failed): it goes back, now due, to be counted where it is delivered.
      const current = this.#egress.site(job.domain);
      if (!(current instanceof Promise) && current.key !== dispatch.site) {
        this.scheduler.add({ ...job, due: Date.now() });
        return;
      }
      for (const r of rows) this.#inFlight.add(`${r.message_id}/${r.id}`);
      retry = await this.#deliverRows(job, msg, rows, { site: dispatch.site, source: dispatch.source, connections: this.scheduler.connections(dispatch.site, dispatch.source.address) });
    } catch (err) {
      this.log.error({ err, qid: job.messageId }, 'delivery attempt failed inside the queue; retrying later');
      const due = Date.now() + retryDelay(this.config.queue, 1);
      retry = rows.map((r) => ({ ...r, due }));
    } finally {
      for (const r of rows) this.#inFlight.delete(`${r.message_id}/${r.id}`);
    }
    // Only now, with the rows out of flight, may their next attempt start.
    this.#schedule(job.messageId, retry);
  }

  /** One attempt for some recipients of one message; returns those to retry, each with its own retry time. */
  async #deliverRows(job: Job, msg: MessageRow, rows: RecipientRow[], via: Via): Promise<Array<{ id: number; tenant: string; domain: string; due: number }>> {
    // Recipients already refused for good whose bounce is still owed are not sent again.
    let owed = rows.filter((r) => r.owed === 'failed');
    const toSend = rows.filter((r) => r.owed !== 'failed');
    const outbound: OutboundMessage = {
      queueId: msg.id,
      tenant: job.tenant,
      sender: msg.sender,
      recipients: toSend.map((r) => ({ id: r.id, address: r.address, notify: r.notify, orcpt: r.orcpt })),
      size: msg.size + Buffer.byteLength(msg.trace),
      ret: msg.ret,
      envid: msg.envid,
      body8bit: msg.body8bit === 1,
      open: () => this.#open(msg),
    };
    const result = toSend.length > 0 ? await this.#egress.deliver(job.domain, outbound, this.recordTranscript, via) : { kind: 'outcomes' as const, outcomes: [] };
    const now = Date.now();
    if (result.kind === 'outcomes' && result.signal) this.control.onSignal(via.site, via.source.address, job.tenant, result.signal, now);
    const q = this.config.queue;
    // An operator may have held or purged some of these recipients while the attempt ran: their
    // state is the operator's (the store's update also only touches queued rows), and no notice
    // is written for them.
    const stillQueued = new Set(this.store.recipientsOf(msg.id).filter((r) => r.state === 'queued').map((r) => r.id));
    rows = rows.filter((r) => stillQueued.has(r.id));
    owed = owed.filter((r) => stillQueued.has(r.id));
    // Turned away at the banner for the number of connections we had open: not an attempt on the
    // message. It goes back due now and waits for a turn within the pair's lowered window, which
    // an open connection gives it.
    if (result.kind === 'outcomes' && result.signal?.kind === 'capped' && owed.length === 0) {
      this.log.info({ qid: msg.id, tenant: job.tenant, domain: job.domain, reason: result.signal.detail }, 'connection cap reached; retried on an open connection');
      return rows.map((r) => ({ id: r.id, tenant: job.tenant, domain: job.domain, due: now }));
    }

    if (result.kind === 'hold') {
      await this.store.write([{ op: 'updateRecipients', messageId: msg.id, now, updates: rows.map((r) => ({
        id: r.id, state: 'held', nextAttempt: now, code: null, status: null, reply: 'held by route', host: null, attempted: false,
      })) }]);
      this.log.info({ qid: msg.id, tenant: job.tenant, domain: job.domain, recipients: rows.length }, 'held');
      return [];
    }

    const byId = new Map<number, RecipientOutcome>(result.outcomes.map((o) => [o.id, o]));
    for (const r of owed) {
      byId.set(r.id, { id: r.id, verdict: 'bounced', code: r.last_code ?? 550, status: r.last_status ?? '5.0.0', reply: r.last_reply ?? '', host: r.last_host ?? job.domain });
    }
    const updates = new Map<number, RecipientUpdate>();
    const failed: RecipientRow[] = [];
    const delayed: RecipientRow[] = [];
    const expiresAt = msg.received_at + q.maxAge;
    const retryAt = (r: RecipientRow) => Math.min(now + retryDelay(q, r.attempts + 1), Math.max(expiresAt, now + 1));

    for (const r of rows) {
      const o = byId.get(r.id) ?? { id: r.id, verdict: 'deferred', code: 451, status: '4.4.2', reply: '451 4.4.2 no outcome reported', host: job.domain };
      const base = { id: r.id, code: o.code, status: o.status, reply: o.reply, host: o.host, attempted: r.owed !== 'failed' };
      const after = { ...r, attempts: r.attempts + 1, last_code: o.code, last_status: o.status, last_reply: o.reply, last_host: o.host, updated_at: now };
      if (o.verdict === 'delivered') {
        updates.set(r.id, { ...base, state: 'delivered', nextAttempt: now });
      } else if (o.verdict === 'bounced' || now >= expiresAt) {
        const reply = o.verdict === 'bounced' || r.owed === 'failed' ? o.reply : `${o.reply} (gave up: in the queue longer than queue.maxAge)`;
        updates.set(r.id, { ...base, reply, state: 'bounced', nextAttempt: now });
        if (wantsNotice(msg, r, 'failed')) failed.push({ ...after, last_reply: reply });
      } else {
        const warn = q.delayWarning > 0 && r.warned === 0 && now - msg.received_at >= q.delayWarning && wantsNotice(msg, r, 'delayed');
        updates.set(r.id, { ...base, state: 'queued', nextAttempt: retryAt(r), warned: warn });
        if (warn) delayed.push(after);
      }
      if (r.owed !== 'failed') {
        this.log.info({ qid: msg.id, tenant: r.tenant, rcpt: r.address, verdict: o.verdict, status: o.status, reply: o.reply, host: o.host, attempt: r.attempts + 1, delay: now - msg.received_at }, 'delivery attempt');
      }
    }

    // The notices are written before the outcomes are committed, and their queue records go in the
    // same transaction: a recipient is never recorded as bounced without its bounce, nor bounced twice.
    const notices: Notice[] = [];
    for (const [list, action] of [[failed, 'failed'], [delayed, 'delayed']] as const) {
      if (list.length === 0) continue;
      try {
        notices.push(await this.writeNotice(msg, list, action, now));
      } catch (err) {
        // No notice could be written (disk full, say). A refused recipient stays queued with the
        // bounce owed: later attempts only retry the notice, never the destination. A delay notice is
        // simply tried again at the next deferral.
        this.log.error({ err, qid: msg.id, action }, 'could not write a delivery status notice; retrying later');
        for (const r of list) {
          const u = updates.get(r.id)!;
          updates.set(r.id, action === 'failed'
            ? { ...u, state: 'queued', nextAttempt: retryAt(r), owed: 'failed' }
            : { ...u, warned: false });
        }
      }
    }
    let noticeIds: number[][];
    try {
      const results = await this.store.write([
        { op: 'updateRecipients', messageId: msg.id, updates: [...updates.values()], now },
        ...notices.map((n) => ({ op: 'insertMessage' as const, message: n.message })),
      ], { essential: true });
      noticeIds = results.slice(1) as number[][];
    } catch (err) {
      // The destination has answered; that answer must not be lost, or a delivered message would be
      // sent again at every retry. The outcomes stay in memory and are committed later; the notices'
      // files go (they take room), and a refused recipient's bounce becomes owed instead, as when
      // its notice could not be written. The outcomes are kept before the files go: a file that
      // cannot be removed must not make the destination be tried again.
      const discard = () => Promise.all(notices.map((n) => n.writer.discard()
        .catch((e: unknown) => this.log.error({ err: e, qid: n.writer.id }, 'could not remove an unrecorded delivery status notice'))));
      // Only deferrals: nothing was delivered or refused, so trying the destination again is harmless.
      if ([...updates.values()].every((u) => u.state === 'queued' && !u.owed)) {
        await discard();
        throw err;
      }
      for (const [list, action] of [[failed, 'failed'], [delayed, 'delayed']] as const) {
        for (const r of list) {
          if (!notices.some((n) => n.action === action)) continue;
          const u = updates.get(r.id)!;
          updates.set(r.id, action === 'failed' ? { ...u, state: 'queued', nextAttempt: now, owed: 'failed' } : { ...u, warned: false });
        }
      }
      this.pendingOutcomes.keep(msg.id, [...updates.values()], now, err);
      await discard();
      return [];
    }
    notices.forEach((n, i) => this.#schedule(n.message.id, n.message.recipients.map((r, j) => ({ ...r, id: noticeIds[i][j], due: now }))));
    return [...updates.values()].filter((u) => u.state === 'queued').map((u) => ({ id: u.id, tenant: job.tenant, domain: job.domain, due: u.nextAttempt }));
  }

  private async writeNotice(msg: MessageRow, recipients: RecipientRow[], action: NoticeAction, now: number): Promise<Notice> {
    const returnFull = msg.size <= RETURN_FULL_LIMIT;
    const parts = buildNotice({ hostname: this.config.hostname, message: msg, recipients, action, now, willRetryUntil: msg.received_at + this.config.queue.maxAge }, returnFull);
    // A notice is not new mail: it may use the room below queue.minFree.
    const writer = await this.spool.createWriter(newQueueId());
    const open = () => this.#open(msg);
    try {
      await pipeline(Readable.from((async function* () {
        yield Buffer.from(parts.head);
        if (parts.returnBody) yield* open();
        else yield await readHeaderSection(open());
        yield Buffer.from(parts.tail);
      })()), writer);
      await writer.commit();
    } catch (err) {
      await writer.discard();
      throw err;
    }
    const domain = msg.sender.slice(msg.sender.lastIndexOf('@') + 1).toLowerCase();
    const tenant = recipients[0].tenant;
    return {
      writer,
      action,
      message: {
        id: writer.id, size: writer.bytes, sender: '', receivedAt: now, trace: '', ret: null, envid: null,
        smtputf8: msg.smtputf8 === 1, body8bit: true, client: '', helo: '', authUser: null, listener: 'notice', kind: 'dsn',
        recipients: [{ tenant, address: msg.sender, domain, orcpt: null, notify: 'NEVER' }],
      },
    };
  }

  async #flushStats(): Promise<void> {
    this.#statsFlushedAt = Date.now();
    const rows = this.#stats.takeDirty();
    if (rows.length === 0) return;
    try {
      await this.store.write([{ op: 'saveEngineStats', rows }]);
    } catch (err) {
      this.#stats.restore(rows);
      throw err;
    }
  }

  /** Removes finished messages (spool files first, then their rows); writes statistics; prunes old scan records and transcripts. */
  async #sweep(): Promise<void> {
    if (this.#sweeping) return;
    this.#sweeping = true;
    try {
      const now = Date.now();
      if (now - this.#statsFlushedAt >= STATS_FLUSH_MS) await this.#flushStats();
      if (now - this.#prunedAt >= PRUNE_INTERVAL_MS) {
        this.#prunedAt = now;
        await this.store.write([
          { op: 'pruneScans', before: now - this.config.scanning.recordRetention },
          { op: 'pruneTranscripts', before: now - this.config.delivery.transcripts.retention },
        ]);
      }
      if (now - this.#leftoversAt >= Math.min(PRUNE_INTERVAL_MS, this.config.queue.leftoverRetention)) {
        this.#leftoversAt = now;
        await this.corrupt.removeLeftovers(now);
      }
      const ids = this.store.doneMessages(2000);
      if (ids.length === 0) return;
      for (const id of ids) this.#forget(id);
      await Promise.all(ids.map((id) => this.spool.remove(id)));
      await this.store.write(ids.map((id) => ({ op: 'deleteMessage' as const, id })), { essential: true });
    } catch (err) {
      this.log.error({ err }, 'queue sweep failed');
    } finally {
      this.#sweeping = false;
    }
  }
}
