/*
 * queue/ — the spool, the queue database, per-tenant lanes, retries, expiry, notices, operator
 * actions and the records; this file composes them into `Queue`, the stage mta/ talks to.
 *
 * Takes: an accepted message from the DATA path (ingress or the proxy's scan) — its spool writer
 *   (the bytes, written once), its envelope (sender, recipients each with its tenant, DSN
 *   parameters, the trace headers Ichidan adds, a quarantine or strip rule) and its scan record;
 *   the scan records of refused messages, shadow engines' late runs, engine events and delivery's
 *   session transcripts (records, queue-records.ts); operator commands (queue-operator.ts,
 *   queue-operator-bounce.ts, queue-egress-control.ts); turns asked for by the proxy (queue-live.ts); a drain's passes,
 *   which hand queued recipients to cluster peers (queue-transfer.ts).
 * Gives: `accept()` resolves only when the message and its queue record are durable, which is
 *   when the 250 may be sent: in the spool journal, many messages per fdatasync, for messages up
 *   to JOURNAL_BODY_MAX (queue-journal.ts; replayed at startup, queue-journal-replay.ts), else with
 *   the spool file's fsync and a synced commit (concurrent transactions share one). Then each
 *   (tenant × destination domain) lane hands jobs to `delivery/` through the egress of the current
 *   config snapshot; what an attempt means — updates, retry times with jitter, bounce at
 *   `queue.maxAge`, notices — is decided by queue-attempt.ts, and applied here: notices written
 *   (queue-notices.ts) and committed with the outcomes, outcomes the database cannot take kept
 *   (queue-pending.ts). A sweep removes finished messages, expires leftovers and ticks the records.
 *   Bounces carry their class; hard ones go on their tenant's suppression list, whose recipients
 *   are bounced before delivery without contacting the destination (queue-suppression.ts).
 * Reads: the queue database (queue-store.ts, one writer thread shared with the records), the
 *   spool and recently accepted bodies (queue-bodies.ts), free space (queue-space.ts), entries set
 *   aside at startup (queue-reconcile.ts, queue-corrupt-entries.ts).
 * Network: none itself (delivery/ does the talking).
 * RFCs: 3464 (delivery status notifications), 3461 (NOTIFY, RET, ENVID, ORCPT).
 * Settings: dataDir, hostname, queue.*, tenants.*.egress, delivery.sourcePools,
 *   delivery.throttle.*, delivery.transcripts.retention, scanning.recordRetention, suppression.*,
 *   tenants.*.suppression.
 */
import { join } from 'node:path';
import type { Logger } from 'pino';
import type { DeliveryResult, Egress, OutboundMessage, PeerAddress, Via } from '../delivery/index.js';
import type { RunRecord, ScanRecord } from '../engines/engines-records.js';
import { newQueueId } from '../base/base-queue-id.js';
import { attemptOutcome, retryDelay } from './queue-attempt.js';
import { classifyBounce } from './queue-classify.js';
import type { DepthRow } from './queue-depth.js';
import type { QueueDepth } from './queue-depth-domains.js';
import { DepthThread } from './queue-depth-thread.js';
import { commitAttempt } from './queue-attempt-commit.js';
import { MessageBodies } from './queue-bodies.js';
import { DEFAULT_TENANT_POLICY, tenantPolicies, type QueueConfig } from './queue-config.js';
import { CorruptEntries } from './queue-corrupt-entries.js';
import { EgressControl } from './queue-egress-control.js';
import { acquireLiveTurn, type LiveTurn } from './queue-live.js';
import { QueueOperator } from './queue-operator.js';
import { bounceNow } from './queue-operator-bounce.js';
import type { NoticeContext } from './queue-notices.js';
import { PendingOutcomes } from './queue-pending.js';
import { reconcile, type ReconcileReport } from './queue-reconcile.js';
import { QueueRecords } from './queue-records.js';
import { Scheduler, type Dispatch, type Job, type SiteRef, type TenantPolicy } from './queue-scheduler.js';
import { SpaceGuard } from './queue-space.js';
import { ClusterGate } from './cluster/cluster-gate.js';
import type { ClusterLink } from './cluster/cluster-link.js';
import { Spool, type SpoolWriter } from './queue-spool.js';
import { JOURNAL_BODY_MAX, SpoolJournal } from './queue-journal.js';
import { replayJournal } from './queue-journal-replay.js';
import { beginRun, type RunMarker } from './queue-run-marker.js';
import { readFile } from 'node:fs/promises';
import { Suppressions } from './queue-suppression.js';
import { transferPass, type TransferTally } from './queue-transfer.js';
import { QueueStore, type MessageRow, type NewMessage, type RecipientRow, type RecipientSelector, type WriteOp } from './queue-store.js';

export { newQueueId } from '../base/base-queue-id.js';
export type { EgressEvent } from './queue-records-egress.js';
export type { HoldRequest } from './queue-egress-control.js';
export type { PairView } from './queue-scheduler.js';
export type { SpoolWriter } from './queue-spool.js';
export type { NewRecipient } from './queue-store.js';
export type { DepthRow } from './queue-depth.js';

/** One recipient's outcome of one delivery attempt, for the metrics (`Queue.onAttempt`). */
export interface AttemptEvent {
  tenant: string;
  site: string;
  outcome: 'delivered' | 'deferred' | 'bounced';
  /** The reply's class (queue-classify.ts `BOUNCE_CLASSES`) for a deferral or a bounce; null when delivered. */
  class: string | null;
}

const SWEEP_INTERVAL_MS = 250;
/** Never-acknowledged leftovers are looked for at most this often (or at queue.leftoverRetention if shorter). */
const LEFTOVERS_INTERVAL_MS = 3_600_000;

/** What the DATA path hands over: the queue record less what the queue assigns itself. */
/** A cluster's Redis, when the node shares its limits: the link and how many nodes are live. */
export interface SharedLimits {
  link: ClusterLink;
  nodes: () => number;
}

export type AcceptedEnvelope = Omit<NewMessage, 'id' | 'size' | 'receivedAt' | 'kind'>;

/** Recipients to schedule, each at its own due time. */
type Due = Array<{ id: number; tenant: string; domain: string; due: number }>;

export class Queue {
  readonly spool: Spool;
  /** Where new messages are made durable, many per fdatasync (queue-journal.ts); null when queue.fsync is off. */
  readonly journal: SpoolJournal | null;
  readonly store: QueueStore;
  /** Scan records, engine statistics and events, transcripts, egress events: through the store's writer thread. */
  readonly records: QueueRecords;
  readonly scheduler: Scheduler;
  readonly control: EgressControl;
  readonly space: SpaceGuard;
  /** Outcomes the database could not take yet: their recipients are not attempted again meanwhile. */
  readonly pendingOutcomes: PendingOutcomes;
  /** Entries set aside at startup: listed, requeued and deleted by an operator, leftovers expired. */
  readonly corrupt: CorruptEntries;
  /** Session transcripts from delivery/ (and the proxy): stored without holding delivery up; a failed write is logged. */
  readonly recordTranscript: QueueRecords['recordTranscript'];
  /** Each tenant's suppressed recipients (queue-suppression.ts): looked up at RCPT and before every delivery. */
  readonly suppressions: Suppressions;
  readonly #bodies: MessageBodies;
  readonly #operator: QueueOperator;
  #policies = new Map<string, TenantPolicy>();
  #sweepTimer: NodeJS.Timeout | null = null;
  #sweeping = false;
  #egress: Egress;
  #leftoversAt = Date.now();
  /** This run's marker in the data folder (queue-run-marker.ts). */
  #marker: RunMarker | null = null;
  /** Recipients ("message id/recipient number") with an attempt running now. */
  readonly #inFlight = new Set<string>();

  /** The limits shared with the cluster's other nodes (cluster/cluster-gate.ts); null when alone. */
  readonly gate: ClusterGate | null;
  /** Recipients queued and held per tenant and state (the metrics), read off the main thread at most every few seconds (queue-depth-thread.ts). */
  readonly depth: () => Promise<DepthRow[]>;
  /** Recipients queued and held per tenant and domain (the dashboard's history), read off the main thread. */
  readonly depthByDomain: () => Promise<QueueDepth>;
  readonly #depthThread: DepthThread;
  /** Told each recipient's outcome of each attempt (the metrics). */
  onAttempt: ((e: AttemptEvent) => void) | null = null;
  /** Told each scan recorded, of accepted and refused messages alike (the metrics). */
  onScan: ((scan: ScanRecord) => void) | null = null;

  private constructor(private config: QueueConfig, egress: Egress, private readonly log: Logger, shared?: SharedLimits) {
    this.spool = new Spool(join(config.dataDir, 'spool'), config.queue.fsync);
    this.store = new QueueStore(join(config.dataDir, 'queue.db'), config.queue.fsync, config.queue.commitWindow);
    this.journal = config.queue.fsync ? new SpoolJournal(join(config.dataDir, 'journal'), this.spool.fsyncs, undefined, config.queue.commitWindow) : null;
    if (this.journal) this.journal.settle = (ids) => this.#settle(ids);
    this.records = new QueueRecords(this.store, log, () => ({ scans: this.config.scanning.recordRetention, transcripts: this.config.delivery.transcripts.retention }));
    this.recordTranscript = this.records.recordTranscript;
    this.#depthThread = new DepthThread(join(config.dataDir, 'queue.db'));
    this.depth = () => this.#depthThread.rows();
    this.depthByDomain = () => this.#depthThread.domains();
    this.#bodies = new MessageBodies(this.spool);
    this.#egress = egress;
    this.gate = shared ? new ClusterGate(shared.link, {
      trim: (site, source, keep) => this.#egress.trimPair(site, source, keep),
      open: (site, source) => this.#egress.openToPair(site, source),
      nodes: shared.nodes,
      // The scheduler is built next: a wake before that has nothing to wake.
      wake: () => this.scheduler?.wake(),
    }, log) : null;
    this.scheduler = new Scheduler(
      { concurrency: config.queue.concurrency, laneConcurrency: config.queue.laneConcurrency },
      {
        run: (dispatch) => this.#attempt(dispatch),
        resolveSite: (domain) => this.#egress.site(domain),
        tenantPolicy: (tenant) => this.#policies.get(tenant) ?? DEFAULT_TENANT_POLICY,
        gate: this.gate ?? undefined,
      },
    );
    this.#policies = tenantPolicies(config);
    this.control = new EgressControl(config, this.scheduler, this.records, log);
    this.space = new SpaceGuard([this.spool.dir, config.dataDir], join(config.dataDir, 'reserve'), config, log);
    this.store.onFull = () => this.space.release();
    // The room a released reserve gave back is for outcomes and removals, not for new records.
    this.store.refuseNewMail = () => this.space.released;
    this.corrupt = new CorruptEntries(this.spool, this.store, log, (rows) => this.#scheduleRows(rows), () => this.config.queue.leftoverRetention);
    this.pendingOutcomes = new PendingOutcomes(this.store, log, (id, recipientIds) => {
      const ids = new Set(recipientIds);
      this.#scheduleRows(this.store.recipientsOf(id).filter((r) => ids.has(r.id) && r.state === 'queued'));
    });
    this.suppressions = new Suppressions(this.store, () => this.config, log);
    this.#operator = new QueueOperator(this.store, log, (rows) => this.#scheduleRows(rows),
      (domain) => Promise.resolve(this.#egress.site(domain)).then((s) => s.key, () => null));
  }

  /**
   * The spool's fsync time, ms: the 99th percentile of those that ended within the last
   * `windowMs`, or the age of one still running when that is longer; null when there was none.
   */
  fsyncP99Ms(windowMs = 1000): number | null {
    return this.spool.fsyncs.worst(99, windowMs);
  }

  /** The least free share (0–1) of the spool's and the queue database's file systems; null when unknown. */
  diskFree(): number | null {
    return this.space.freeShare;
  }

  /** Opens spool and database, reconciles them, and schedules every open recipient. */
  static async open(config: QueueConfig, egress: Egress, log: Logger, shared?: SharedLimits): Promise<{ queue: Queue; report: ReconcileReport }> {
    const marker = await beginRun(config.dataDir, log);
    const queue = new Queue(config, egress, log, shared);
    queue.#marker = marker;
    queue.gate?.start();
    await queue.spool.init();
    await queue.space.start();
    if (queue.journal) {
      const replay = await replayJournal(queue.journal, queue.spool, queue.store);
      if (replay.rewritten + replay.reinserted > 0) log.warn({ ...replay }, 'spool journal replayed after an unclean stop');
    }
    const report = await reconcile(queue.spool, queue.store);
    for (const c of report.corrupt) log.warn({ qid: c.id, kind: c.kind, reason: c.reason }, 'queue entry set aside as corrupt');
    if (report.deferred > 0) log.error({ entries: report.deferred }, 'no room to record what reconciliation found: those entries are left as they are until the next start');
    await queue.corrupt.removeLeftovers(Date.now()).catch((err) => log.error({ err }, 'could not remove never-acknowledged leftovers'));
    const restored = queue.control.restore();
    if (restored > 0) log.info({ events: restored }, 'egress holds and pauses still in force restored');
    queue.#scheduleRows(queue.store.openRecipients());
    queue.records.load();
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

  /** A turn for a live session (the transparent proxy) at a site, taken through the scheduler like a delivery (queue-live.ts). */
  acquireLive(tenant: string, site: SiteRef, waitMs: number, leave?: AbortSignal): Promise<LiveTurn> {
    return acquireLiveTurn(this.scheduler, tenant, site, waitMs, leave);
  }

  /** Whether new mail of `declaredSize` bytes is to be refused (452 4.3.1): the queue's filesystems are below `queue.minFree`. */
  lowOnSpace(declaredSize = 0): boolean {
    return this.space.low(declaredSize);
  }

  /** Holds recipients (one message's, a tenant's, a site's) so they stay queued until released; resolves with how many. */
  holdRecipients(select: RecipientSelector): Promise<number> {
    return this.#operator.hold(select);
  }

  /** Removes recipients from the queue without a notice; resolves with how many (queue-operator.ts). */
  purge(select: RecipientSelector, reason: string): Promise<number> {
    return this.#operator.purge(select, reason);
  }

  /** Queued recipients tried now (the wait for their next attempt cleared); resolves with how many. */
  flush(select: RecipientSelector): Promise<number> {
    return this.#operator.flush(select);
  }

  /**
   * Recipients failed now with a notice to their sender (queue-operator-bounce.ts); those with an
   * attempt under way are left (`busy`).
   */
  bounce(select: RecipientSelector, reason?: string): Promise<{ bounced: number; busy: number }> {
    const key = (id: string, r: number) => `${id}/${r}`;
    return bounceNow({
      store: this.store, log: this.log, notices: this.#notices(),
      claim: (id, r) => !this.#inFlight.has(key(id, r)) && !!this.#inFlight.add(key(id, r)),
      release: (id, r) => this.#inFlight.delete(key(id, r)),
      reschedule: (rows) => this.#scheduleRows(rows),
      schedule: (n, ids) => this.#schedule(n.id, n.recipients.map((r, j) => ({ ...r, id: ids[j], due: Date.now() }))),
    }, select, reason, Date.now());
  }

  /** Recipients with a delivery attempt under way now, of one message (a delete reports them). */
  inFlightOf(messageId: string): number {
    return [...this.#inFlight].filter((k) => k.startsWith(`${messageId}/`)).length;
  }

  /** Held recipients back into the queue (by tenant and/or domain); resolves with how many. */
  release(tenant: string | null, domain: string | null): Promise<number> {
    return this.#operator.release(tenant, domain);
  }

  /** A quarantined (or otherwise held) message's recipients back into the queue; resolves with how many. */
  releaseMessage(id: string): Promise<number> {
    return this.#operator.releaseMessage(id);
  }

  /** The destination domains with queued or held mail that belong to a site (looked up as delivery would). */
  domainsOfSite(site: string): Promise<string[]> {
    return this.#operator.domainsOfSite(site);
  }

  /** A spool file for new mail (`id`: a transfer's; created exclusively): writes stop (ENOSPC, so 452) below queue.minFree. */
  async createWriter(id = newQueueId()): Promise<SpoolWriter> {
    return this.spool.createWriter(id, (bytes) => this.space.take(bytes));
  }

  /** A drain pass: queued recipients handed to these peers, signed with the cluster's secret (queue-transfer.ts). */
  transferToPeers(peers: PeerAddress[], cluster: { node: string; secret: string }, tally: TransferTally): Promise<number> {
    return transferPass({
      store: this.store, log: this.log, ...cluster, inFlight: this.#inFlight, owes: (id, r) => this.pendingOutcomes.owes(id, r),
      open: (msg) => this.#bodies.open(msg), send: (peer, msg) => this.#egress.transfer(peer, msg), reschedule: (rows) => this.#scheduleRows(rows),
    }, peers, tally);
  }

  /**
   * Makes an accepted message durable and queues it; resolves when the 250 may be sent. Its scan
   * record goes in the same transaction. On failure the spool file is removed and nothing of the
   * message remains.
   */
  async accept(writer: SpoolWriter, env: AcceptedEnvelope, expectedBytes: number, scan?: ScanRecord): Promise<string> {
    const receivedAt = Date.now();
    const message: NewMessage = { ...env, id: writer.id, size: expectedBytes, receivedAt, kind: 'mail' };
    let ids: number[] = [];
    let body: Buffer | null = null;
    try {
      const unit: WriteOp[] = [{ op: 'insertMessage', message }];
      if (scan) unit.push({ op: 'recordScans', records: [scan] });
      if (this.journal && expectedBytes <= JOURNAL_BODY_MAX) {
        // The journal makes it durable (one fdatasync shared with every message that ended meanwhile);
        // the file and the record are written without a sync of their own.
        await writer.finishUnsynced(expectedBytes);
        // A copy, not the received chunks: those may be views into much larger socket buffers.
        body = writer.kept ? Buffer.concat(writer.kept) : await readFile(writer.path);
        if (body.length !== expectedBytes) throw Object.assign(new Error(`spool file ${writer.id} holds ${body.length} of ${expectedBytes} bytes`), { code: 'EIO' });
        await this.journal.append(writer.id, message, body);
        try {
          [ids] = await this.store.write(unit, { durable: false }) as [number[]];
        } catch (err) {
          // No 250 goes out: the journal must not bring the message back after a crash.
          await this.journal.drop([writer.id]).catch((e) => this.log.error({ err: e, qid: writer.id }, 'could not journal a message that was not queued'));
          throw err;
        }
        this.journal.stored(writer.id);
      } else {
        await writer.commit(expectedBytes);
        [ids] = await this.store.write(unit) as [number[]];
      }
    } catch (err) {
      await writer.discard();
      throw err;
    }
    if (scan) {
      this.records.countScan(scan);
      this.onScan?.(scan);
    }
    // Quarantined: stored durably, held until an operator releases it.
    if (env.quarantine) return writer.id;
    if (writer.kept) this.#bodies.remember(writer.id, body ?? Buffer.concat(writer.kept));
    this.#schedule(writer.id, env.recipients.map((r, i) => ({ ...r, id: ids[i], due: receivedAt })));
    return writer.id;
  }

  /**
   * The spool journal's oldest segment has to go while these messages are still queued: their files
   * and every queue record written so far are made durable in place (the records with one synced commit).
   */
  async #settle(ids: string[]): Promise<void> {
    for (const id of ids) await this.spool.syncFile(id);
    await this.spool.dirSync.sync();
    await this.store.write([{ op: 'journalSettled', at: Date.now() }], { essential: true });
    if (ids.length > 0) this.log.info({ messages: ids.length, total: this.journal!.settled + ids.length }, 'spool journal: queued messages settled in place');
  }

  /** Records the scan of a message that was refused (accepted ones are recorded by `accept`). */
  recordScan(scan: ScanRecord): void {
    this.records.recordScan(scan);
    this.onScan?.(scan);
  }

  /** Runs of shadow engines that ended after the verdict: added to the message's record and the statistics. */
  recordLateRuns(scan: ScanRecord, runs: RunRecord[]): void {
    this.records.recordLateRuns(scan, runs);
  }

  /** Stops dispatching, waits up to `graceMs` for attempts in flight, then closes the database. */
  async close(graceMs = 10_000): Promise<void> {
    this.scheduler.stop();
    if (this.#sweepTimer) clearInterval(this.#sweepTimer);
    const until = Date.now() + graceMs;
    while ((this.scheduler.active > 0 || this.#sweeping) && Date.now() < until) await new Promise((r) => setTimeout(r, 20));
    // Idle sessions QUIT while the database is still open, so their transcripts end complete.
    await this.#egress.closeIdleSessions();
    await this.gate?.close();
    await this.records.close();
    await this.pendingOutcomes.close();
    this.space.stop();
    // Settled in place while the database is still open: the next start needs no replay.
    await this.journal?.retireAll().catch((err) => this.log.error({ err }, 'could not settle the spool journal: the next start replays it'));
    await this.#depthThread.close();
    const synced = await this.store.close();
    await this.journal?.close();
    await this.spool.close();
    // Only a database left complete and synced spares the next start its check (with queue.fsync off
    // nothing is ever synced: a clean close is all there is to tell).
    if (synced || !this.config.queue.fsync) await this.#marker?.end().catch((err) => this.log.error({ err }, 'could not remove the run marker: the next start checks the queue database'));
  }

  /** One job per lane (tenant × domain) and due time for these recipients of one message. */
  #schedule(messageId: string, recipients: Due): void {
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

  async #attempt(dispatch: Dispatch): Promise<void> {
    const { job } = dispatch;
    let rows: RecipientRow[] = [];
    let retry: Due = [];
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
      retry = await this.#deliverRows(job, msg, rows, { site: dispatch.site, source: dispatch.source, connections: this.#connections(dispatch) });
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

  /** Connections the attempt's pair may have open: a learnt cap, and in a cluster the leases this node holds. */
  #connections(dispatch: Dispatch): number | undefined {
    const learnt = this.scheduler.connections(dispatch.site, dispatch.source.address);
    if (!this.gate) return learnt;
    const cap = this.#egress.sites.limits(dispatch.site).limits.maxConnections;
    return Math.min(learnt ?? Infinity, this.gate.connections(dispatch.site, dispatch.source.address ?? '', cap));
  }

  /** One attempt for some recipients of one message; returns those to retry, each with its own retry time. */
  async #deliverRows(job: Job, msg: MessageRow, rows: RecipientRow[], via: Via): Promise<Due> {
    // Recipients already refused for good whose bounce is still owed are not sent again, nor those on their tenant's suppression list.
    const stopped = this.suppressions.stop(job.tenant, rows.filter((r) => r.owed !== 'failed'), Date.now());
    const toSend = rows.filter((r) => r.owed !== 'failed' && !stopped.has(r.id));
    const outbound: OutboundMessage = {
      queueId: msg.id,
      tenant: job.tenant,
      sender: msg.sender,
      recipients: toSend.map((r) => ({ id: r.id, address: r.address, notify: r.notify, orcpt: r.orcpt })),
      size: msg.size + Buffer.byteLength(msg.trace),
      ret: msg.ret,
      envid: msg.envid,
      body8bit: msg.body8bit === 1,
      open: () => this.#bodies.open(msg),
    };
    let result: DeliveryResult = toSend.length > 0 ? await this.#egress.deliver(job.domain, outbound, this.recordTranscript, via) : { kind: 'outcomes', outcomes: [] };
    if (result.kind === 'outcomes' && stopped.size > 0) result = { ...result, outcomes: [...result.outcomes, ...stopped.values()] };
    const now = Date.now();
    if (result.kind === 'outcomes' && result.signal) this.control.onSignal(via.site, via.source.address, job.tenant, result.signal, now);
    // An operator may have held or purged some of these recipients while the attempt ran: their
    // state is the operator's (the store's update also only touches queued rows), and no notice
    // is written for them.
    const stillQueued = new Set(this.store.recipientsOf(msg.id).filter((r) => r.state === 'queued').map((r) => r.id));
    const plan = attemptOutcome({
      message: msg, recipients: rows.filter((r) => stillQueued.has(r.id)), result, domain: job.domain, config: this.config.queue, now, random: Math.random,
      suppression: this.suppressions.rule(job.tenant), stopped: new Set(stopped.keys()),
    });
    const lane = (u: { id: number; due: number }) => ({ ...u, tenant: job.tenant, domain: job.domain });
    if (plan.kind === 'capped') {
      this.log.info({ qid: msg.id, tenant: job.tenant, domain: job.domain, reason: plan.reason }, 'connection cap reached; retried on an open connection');
      return rows.filter((r) => stillQueued.has(r.id)).map((r) => lane({ id: r.id, due: now }));
    }
    if (plan.kind === 'held') {
      await this.store.write([{ op: 'updateRecipients', messageId: msg.id, now, updates: plan.updates }]);
      this.log.info({ qid: msg.id, tenant: job.tenant, domain: job.domain, recipients: plan.updates.length }, 'held');
      return [];
    }
    const after = new Map(plan.updates.map((u) => [u.id, u]));
    for (const { recipient: r, outcome: o } of plan.attempted) {
      const u = after.get(r.id);
      // A deferral's next attempt; a recipient still deferred at queue.maxAge is bounced instead.
      const next = u?.state === 'queued' ? { next: new Date(u.nextAttempt).toISOString() } : {};
      this.log.info({ qid: msg.id, tenant: r.tenant, rcpt: r.address, verdict: o.verdict, status: o.status, reply: o.reply, host: o.host, attempt: r.attempts + 1, delay: now - msg.received_at, ...(o.session ? { session: o.session } : {}), ...next }, 'delivery attempt');
      const outcome = u?.state === 'delivered' ? 'delivered' : u?.state === 'bounced' ? 'bounced' : 'deferred';
      this.onAttempt?.({
        tenant: r.tenant, site: via.site, outcome,
        class: outcome === 'delivered' ? null : u?.bounceClass ?? classifyBounce({ code: o.code, status: o.status, text: o.reply }),
      });
    }

    const committed = await commitAttempt({ store: this.store, pending: this.pendingOutcomes, log: this.log, notices: this.#notices(), journal: this.journal }, msg, plan, now);
    this.suppressions.report(msg.id, job.tenant, rows, committed.updates, now);
    for (const n of committed.notices) this.#schedule(n.message.id, n.message.recipients.map((r, j) => ({ ...r, id: n.recipientIds[j], due: now })));
    return committed.updates.filter((u) => u.state === 'queued').map((u) => lane({ id: u.id, due: u.nextAttempt }));
  }

  /** Where notices are written, and what they say (queue-notices.ts). */
  #notices(): NoticeContext {
    return { spool: this.spool, hostname: this.config.hostname, maxAge: this.config.queue.maxAge, open: (m: MessageRow) => this.#bodies.open(m) };
  }

  /** Removes finished messages (spool files first, then their rows); expires leftovers; ticks the records (statistics, pruning). */
  async #sweep(): Promise<void> {
    if (this.#sweeping) return;
    this.#sweeping = true;
    try {
      const now = Date.now();
      await this.records.tick(now);
      await this.suppressions.tick(now);
      if (now - this.#leftoversAt >= Math.min(LEFTOVERS_INTERVAL_MS, this.config.queue.leftoverRetention)) {
        this.#leftoversAt = now;
        await this.corrupt.removeLeftovers(now);
      }
      const ids = this.store.doneMessages(2000);
      if (ids.length === 0) return;
      for (const id of ids) this.#bodies.forget(id);
      // Dropped from the journal first: once the record is gone, a replay must not bring the message back.
      await this.journal?.drop(ids);
      await Promise.all(ids.map((id) => this.spool.remove(id)));
      // Unsynced with the journal on: rows that come back after a crash are of messages already done (or
      // their final outcomes are in the journal), and are swept again.
      await this.store.write(ids.map((id) => ({ op: 'deleteMessage' as const, id })), { essential: true, durable: !this.journal, lazy: true });
    } catch (err) {
      this.log.error({ err }, 'queue sweep failed');
    } finally {
      this.#sweeping = false;
    }
  }
}

