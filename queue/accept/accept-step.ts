/*
 * The accept step: one message's DATA, from its first byte to the one reply, for MX, submission
 * and the proxy's scanned mail alike.
 *
 *   receive   the bytes go to a spool writer as they arrive (accept-receive.ts) under the guards:
 *             too big (552 5.3.4), a bare CR or LF (550 5.6.0), NUL unless limits.allowNul
 *             (550 5.6.0), a spool write that failed (452 4.3.1 when storage is short, else 451
 *             4.3.0); the structure check runs on the same bytes (accept-structure.ts);
 *   scan      the engines of the transaction's snapshot, with the structure finding (accept-scan.ts),
 *             once a scan slot is free when the caller gives slots (accept-slots.ts; none within half
 *             the DATA deadline: 451 4.3.2; the client gone meanwhile: nothing is kept);
 *   verdict   reject / tempfail: the engines' reply (550 5.7.1, 451 4.7.1; 550 5.6.0 structure);
 *             quarantine: queued and held; accept / tag: queued, or handed back to be relayed;
 *   headers   the verdict's fields in front of the message (accept-headers.ts), after the caller's
 *             Received field, and the strip rule for the sender's own copies of them;
 *   sign      outbound mail the caller marks for signing (`dkim`): the DKIM-Signature fields go in
 *             front of those, made from what was gathered while the data streamed in
 *             (accept-dkim.ts); the spool file is still written once and never rewritten;
 *   queue     `queue.accept` resolves when the message is durable: only then the 250.
 * A message a cluster peer transferred keeps its queue id and skips the scan (it was scanned
 * where it was first accepted); the receive guards still apply.
 * Every scan is recorded, refused mail's too, and shadow engines' late runs are added to it.
 * Nothing of a refused or broken-off message is kept.
 *
 * Modes: `queue` (MX and submission) queues accepted mail; `relay` (the transparent proxy) hands
 * accepted and tagged mail back with the verdict's fields and the spool file, as received, for the
 * caller to relay and then discard. It holds quarantined mail as received, with the verdict's fields
 * only and no strip rule (the bytes the relay would have sent), and says so in its 250 since no
 * destination answers for it; and it lets NUL through, as the proxy's unscanned relay does.
 *
 * Takes: the data stream, the envelope, the snapshot the transaction borrowed, the limits.
 * Gives: an AcceptResult. Internal failures go to the log; the client gets the bland reply.
 * Settings: limits.maxMessageSize, limits.dataTimeout, limits.allowNul, limits.maxHeaderSize,
 *   limits.maxHeaderFields, limits.maxMimeDepth, limits.maxMimeParts; `engines`, `scanning`.
 */
import type { Readable } from 'node:stream';
import type { Logger } from 'pino';
import { isStorageError } from '../../base/base-errors.js';
import { heldInQuarantine, queued, REPLIES, type SmtpReply } from '../../base/base-reply.js';
import type { ScanRecord } from '../../engines/engines-records.js';
import type { AcceptedEnvelope, Queue } from '../index.js';
import type { SpoolWriter } from '../queue-spool.js';
import { receiveInto, type ReceiveResult } from './accept-receive.js';
import type { AcceptLimits } from './accept-config.js';
import { verdictFields, verdictStripRule } from './accept-headers.js';
import { DkimCollector, signatures, type DkimSigning } from './accept-dkim.js';
import { parseStripRule, HEADER_LIMIT } from '../queue-headers.js';
import { scanSpooled, type ScanSnapshot } from './accept-scan.js';
import type { ScanPriority, ScanSlots, SlotRelease } from './accept-slots.js';

export type { ScanSnapshot } from './accept-scan.js';

export interface AcceptInput {
  mode: 'queue' | 'relay';
  stream: Readable;
  envelope: Omit<AcceptedEnvelope, 'trace' | 'quarantine' | 'strip'>;
  /** The client's host name from a reverse lookup, when one was made. */
  clientName: string | null;
  /** The snapshot the transaction borrowed: its engines scan the message; a use is held while they do. */
  snapshot: ScanSnapshot;
  /** limits.dataTimeout bounds the scan here; the data's own deadline is the caller's (`receiving`). */
  limits: AcceptLimits;
  /** The name Ichidan receives as: its own Authentication-Results are stripped from the sender's copy. */
  hostname: string;
  /** The trace fields the caller adds once the message has its queue id (a Received field; '' for none). */
  trace: (queueId: string) => string;
  /** Called as the data starts to arrive; the function it returns, when the data has ended (deadlines). */
  receiving?: () => () => void;
  /**
   * A message a cluster peer transferred (queue/cluster/cluster-transfer.ts): queued under
   * `queueId` (a new one when not given), and not scanned again (it was where it was first accepted).
   */
  transfer?: { queueId?: string };
  /**
   * The scan slots this message waits for before its scan (admission: known senders first); its
   * wait is bounded by limits.dataTimeout, past which the client gets 451 4.3.2 and nothing is kept.
   * `deferred`, asked once the body is in, before any scan, and again once the slot is taken (the
   * level may have risen during the wait): a reply to give instead of scanning and queueing it (the
   * admission's overload deferral of an unknown sender; nothing is kept).
   */
  scanSlot?: { slots: ScanSlots; priority: ScanPriority; gone?: AbortSignal; deferred?: () => SmtpReply | null };
  /** Outbound mail that is DKIM-signed when its From: domain has keys (`queue` mode; not for transfers). */
  dkim?: DkimSigning;
}

/** The message handed back to be relayed: the verdict's fields, then the spool file (or the bytes kept in memory). */
export interface RelayedMessage {
  headers: string;
  path: string;
  bytes: number;
  kept: Buffer | null;
  /** The relay is over: the spool file is removed. */
  done(): Promise<void>;
}

/** What the engines made of a message they scanned (the known senders learn from it). */
export interface ScanOutcome {
  record: ScanRecord;
  /** The combined spam level in normalised units (1: the engines' threshold), when a spam engine answered. */
  spamScore: number | null;
}

export type AcceptResult =
  /** Refused: nothing of the message is kept (`scan`: when the engines' verdict refused it). */
  | { kind: 'refused'; reply: SmtpReply; scan?: ScanOutcome }
  /** The data broke off before its end (a deadline, the client gone): nothing is kept. */
  | { kind: 'incomplete'; reply: SmtpReply; error: Error }
  /** Durable in the queue (quarantined: held until an operator releases it). */
  | { kind: 'queued'; reply: SmtpReply; queueId: string; quarantined: boolean; scan?: ScanOutcome }
  /** `relay` mode, accepted or tagged: the caller relays it; its destination gives the reply. */
  | { kind: 'relay'; message: RelayedMessage };

type AcceptQueue = Pick<Queue, 'lowOnSpace' | 'createWriter' | 'accept' | 'recordScan' | 'recordLateRuns'>;

/** What a storage failure (the disk, the queue database) or any other local failure tells the client. */
const failureReply = (err: unknown): SmtpReply => (isStorageError(err) ? REPLIES.storageFull : REPLIES.localError);

/** What the `queue` mode gives: always a reply, never a message to relay. */
export type QueuedResult = Exclude<AcceptResult, { kind: 'relay' }>;

export async function acceptMessage(input: AcceptInput & { mode: 'queue' }, queue: AcceptQueue, log: Logger): Promise<QueuedResult>;
export async function acceptMessage(input: AcceptInput, queue: AcceptQueue, log: Logger): Promise<AcceptResult>;
export async function acceptMessage(input: AcceptInput, queue: AcceptQueue, log: Logger): Promise<AcceptResult> {
  // The snapshot stays usable for the whole step, whoever else lets it go meanwhile (a reload).
  input.snapshot.retain();
  try {
    return await receiveAndQueue(input, queue, log);
  } finally {
    input.snapshot.release();
  }
}

async function receiveAndQueue(input: AcceptInput, queue: AcceptQueue, log: Logger): Promise<AcceptResult> {
  const { stream, envelope } = input;
  const where = { listener: envelope.listener, client: envelope.client };
  const refused = (reply: SmtpReply): AcceptResult => ({ kind: 'refused', reply });
  if (queue.lowOnSpace()) {
    stream.resume();
    return refused(REPLIES.storageFull);
  }
  let writer: SpoolWriter;
  try {
    writer = await queue.createWriter(input.transfer?.queueId);
  } catch (err) {
    log.error({ err }, 'cannot create a spool file');
    stream.resume();
    return refused(failureReply(err));
  }
  const discard = (why: string) => writer.discard().catch((err) => log.error({ err, qid: writer.id }, why));

  const ended = input.receiving?.();
  const signing = input.mode === 'queue' && !input.transfer && input.dkim ? input.dkim : null;
  const collector = signing ? new DkimCollector((domain) => signing.keys(domain), Math.min(input.limits.maxHeaderSize, HEADER_LIMIT)) : null;
  let received: ReceiveResult;
  try {
    received = await receiveInto(stream, writer, input.limits, collector ? (chunk) => collector.feed(chunk) : undefined);
    collector?.finish();
  } catch (err) {
    await discard('could not remove an incomplete message');
    log.info({ ...where, err: (err as Error).message }, 'DATA not completed');
    return { kind: 'incomplete', reply: REPLIES.dataTimeout, error: err as Error };
  } finally {
    ended?.();
  }
  const guard = guardRefusal(received, input.mode === 'relay' || input.limits.allowNul);
  if (guard) {
    if (received.writeError) log.error({ err: received.writeError, qid: writer.id }, 'spool write failed');
    await discard('could not remove a refused message');
    log.info({ ...where, qid: writer.id, bytes: received.bytes, reply: `${guard.reply.code} ${guard.reply.enhanced}` }, guard.why);
    return refused(guard.reply);
  }

  try {
    return await judgeAndQueue(input, writer, received, queue, log, collector && signing ? { collector, signing } : null);
  } catch (err) {
    // Anything unexpected after the data arrived: the client still gets an answer, nothing is kept.
    log.error({ err, qid: writer.id }, 'could not process the message');
    await writer.discard().catch(() => undefined);
    return refused(failureReply(err));
  }
}

/**
 * A scan slot within `timeoutMs` (half the DATA deadline, so the scan still has time before the
 * sender's own wait for the reply runs out) and while the client is there; null when none came.
 */
async function takeSlot({ slots, priority, gone }: { slots: ScanSlots; priority: ScanPriority; gone?: AbortSignal }, timeoutMs: number, bytes: number): Promise<SlotRelease | null> {
  const deadline = AbortSignal.timeout(timeoutMs);
  try {
    return await slots.take(priority, gone ? AbortSignal.any([deadline, gone]) : deadline, bytes);
  } catch {
    return null;
  }
}

/** The refusal the received bytes earn before any engine sees them (null: none). */
function guardRefusal(received: ReceiveResult, nulAllowed: boolean): { reply: SmtpReply; why: string } | null {
  if (received.oversized) return { reply: REPLIES.tooBig, why: 'message too big' };
  if (received.bareLineEnding) return { reply: REPLIES.badLineEndings, why: 'bare CR or LF in message data' };
  if (received.nul && !nulAllowed) return { reply: REPLIES.nulInData, why: 'NUL in message data' };
  if (received.writeError) return { reply: failureReply(received.writeError), why: 'spool write failed' };
  return null;
}

async function judgeAndQueue(
  input: AcceptInput, writer: SpoolWriter, received: ReceiveResult, queue: AcceptQueue, log: Logger,
  dkim: { collector: DkimCollector; signing: DkimSigning } | null,
): Promise<AcceptResult> {
  const { envelope, snapshot } = input;
  const { bytes, structure } = received;
  let fields = '';
  let quarantine: string | null = null;
  let strip: string | null = null;
  let record: ScanRecord | undefined;
  let spamScore: number | null = null;
  let written = () => undefined as void;
  try {
    const deferred = async (reply: SmtpReply): Promise<AcceptResult> => {
      await writer.discard().catch((err) => log.error({ err, qid: writer.id }, 'could not remove a deferred message'));
      log.info({ qid: writer.id, listener: envelope.listener, client: envelope.client, reply: `${reply.code} ${reply.enhanced}` }, 'deferred before its scan');
      return { kind: 'refused', reply };
    };
    const deferral = input.transfer ? null : input.scanSlot?.deferred?.() ?? null;
    if (deferral) return await deferred(deferral);
    if (!input.transfer && (snapshot.engines.size > 0 || structure !== null)) {
      const context = {
        queueId: writer.id, client: envelope.client, clientName: input.clientName, helo: envelope.helo, sender: envelope.sender,
        recipients: envelope.recipients.map((r) => r.address), authUser: envelope.authUser,
        tenants: [...new Set(envelope.recipients.map((r) => r.tenant))],
      };
      const slot: SlotRelease | null = input.scanSlot ? await takeSlot(input.scanSlot, input.limits.dataTimeout / 2, bytes) : () => undefined;
      if (!slot) {
        await writer.discard().catch((err) => log.error({ err, qid: writer.id }, 'could not remove a message left unscanned'));
        log.info({ qid: writer.id, listener: envelope.listener, client: envelope.client, priority: input.scanSlot!.priority }, 'no scan slot in time');
        return { kind: 'refused', reply: REPLIES.scanBusy };
      }
      let late: SmtpReply | null;
      try {
        late = input.scanSlot?.deferred?.() ?? null;
      } catch (err) {
        slot(false);
        throw err;
      }
      if (late) {
        slot(false);
        return await deferred(late);
      }
      let scanned;
      try {
        scanned = await scanSpooled(writer, bytes, context, snapshot, input.limits.dataTimeout, structure, (r, runs) => queue.recordLateRuns(r, runs), log);
      } finally {
        slot();
      }
      ({ record, written } = scanned);
      const { verdict, reply } = scanned.decision;
      log.info({
        qid: writer.id, listener: envelope.listener, verdict: verdict.action, reason: verdict.reason, ms: record.ms,
        engines: record.runs.map((r) => `${r.engine}:${r.status}${r.error ? `(${r.error})` : ''}`).join(' '),
      }, 'scanned');
      if (reply) {
        await writer.discard().catch((err) => log.error({ err, qid: writer.id }, 'could not remove a refused message'));
        queue.recordScan(record);
        return { kind: 'refused', reply, scan: { record, spamScore: verdict.spamScore } };
      }
      spamScore = verdict.spamScore;
      if (verdict.action === 'quarantine') quarantine = verdict.reason;
      fields = verdictFields(verdict);
      if (input.mode === 'queue') strip = verdictStripRule(verdict, input.hostname);
    }
    if (input.mode === 'relay' && !quarantine) {
      if (record) queue.recordScan(record);
      const kept = writer.kept ? Buffer.concat(writer.kept) : null;
      return { kind: 'relay', message: { headers: fields, path: writer.path, bytes, kept, done: () => writer.discard() } };
    }
    let trace = input.trace(writer.id) + fields;
    if (dkim) {
      const signed = signatures(dkim.collector, dkim.signing, trace, parseStripRule(strip), writer.id, log);
      if ('reply' in signed) {
        await writer.discard().catch((err) => log.error({ err, qid: writer.id }, 'could not remove an unsigned message'));
        if (record) queue.recordScan(record);
        return { kind: 'refused', reply: signed.reply };
      }
      trace = signed.fields + trace;
    }
    const id = await queue.accept(writer, { ...envelope, trace, quarantine, strip }, bytes, record);
    log.info({
      qid: id, listener: envelope.listener, client: envelope.client, sender: envelope.sender, recipients: envelope.recipients.length, size: bytes,
      messageId: received.messageId,
      ...(quarantine ? { quarantine } : {}),
    }, quarantine ? 'quarantined' : 'queued');
    const reply = quarantine && input.mode === 'relay' ? heldInQuarantine(id) : queued(id);
    return { kind: 'queued', reply, queueId: id, quarantined: quarantine !== null, ...(record ? { scan: { record, spamScore } } : {}) };
  } finally {
    written();
  }
}
