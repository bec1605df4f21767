/*
 * Scanning for the transparent proxy: a proxied message of a tenant that has scanning on
 * (`proxy.scan`) is written to the spool (its one write), scanned by the engines of the current
 * snapshot exactly as queued mail is, and only then relayed — or refused to the client before the
 * destination has seen a byte of it.
 *
 *   reject / tempfail   the engines' reply goes to the client (550 5.7.1 / 451 4.7.1);
 *   quarantine          the message is stored and held in the queue (released with `ichidan
 *                       quarantine release`, then delivered by the queued path), and the client
 *                       gets 250 with its queue id;
 *   accept / tag        relayed: the verdict's headers, then the spool file as received.
 * Every scan is recorded (`ichidan scans show ID`), refused ones too. Bad data is refused as the
 * listeners refuse it: too big (552 5.3.4), bare CR or LF (550 5.6.0), spool write failure (452);
 * structure past `limits` is judged with the engines' verdict (scanning.unscannable).
 * Takes: the client's data stream and envelope; gives what the proxy says or relays.
 */
import { createReadStream } from 'node:fs';
import { open } from 'node:fs/promises';
import { Readable } from 'node:stream';
import type { Logger } from 'pino';
import type { ScanInput, ScanOutcome } from './proxy-listener.js';
import { spoolMessage } from '../../engines/index.js';
import { runRecord, scanRecord } from '../../engines/engines-records.js';
import type { Queue } from '../../queue/index.js';
import { receiveInto } from '../../queue/accept/accept-receive.js';
import { isStorageError } from '../../base/base-errors.js';
import type { Runtime } from '../ingress/ingress-server.js';
import { headerField } from '../ingress/ingress-server.js';
import { REPLIES, type SmtpReply } from '../../base/base-reply.js';

function reply(r: SmtpReply): ScanOutcome {
  const text = `${r.enhanced} ${r.text}`;
  return { kind: 'answer', reply: { code: r.code, lines: [text], raw: `${r.code} ${text}` } };
}

/** Whether the tenant's proxied mail is scanned. */
export function proxyScans(setting: boolean | string[], tenant: string): boolean {
  return setting === true || (Array.isArray(setting) && setting.includes(tenant));
}

export async function scanProxied(input: ScanInput, runtime: Runtime, queue: Queue, log: Logger): Promise<ScanOutcome> {
  const { config } = runtime;
  const writer = await queue.createWriter();
  let received;
  try {
    received = await receiveInto(input.stream, writer, config.limits);
  } catch (err) {
    // The client's data broke off (it left mid-DATA): nothing was accepted, nothing is kept.
    await writer.discard().catch(() => undefined);
    throw err;
  }
  const refuse = async (r: SmtpReply, why: string) => {
    await writer.discard().catch((err) => log.error({ err, qid: writer.id }, 'could not remove a refused message'));
    log.info({ qid: writer.id, client: input.client, reply: `${r.code} ${r.enhanced}` }, why);
    return reply(r);
  };
  if (received.oversized) return refuse(REPLIES.tooBig, 'proxied message too big');
  if (received.bareLineEnding) return refuse(REPLIES.badLineEndings, 'bare CR or LF in proxied message data');
  if (received.writeError) return refuse(isStorageError(received.writeError) ? REPLIES.storageFull : REPLIES.localError, 'spool write failed');
  await writer.flush();
  const context = {
    queueId: writer.id, client: input.client, helo: input.helo, sender: input.sender, recipients: input.recipients, authUser: null, tenants: [input.tenant],
  };
  const handle = writer.kept ? null : await open(writer.path, 'r');
  runtime.retain();
  let decision;
  try {
    decision = await runtime.engines.scan(spoolMessage(writer.path, received.bytes, writer.kept, handle ?? undefined), context, AbortSignal.timeout(config.limits.dataTimeout), received.structure);
  } catch (err) {
    await handle?.close();
    runtime.release();
    await writer.discard().catch(() => undefined);
    throw err;
  }
  const record = scanRecord(writer.id, [input.tenant], decision, Date.now(), runtime.generation);
  const { verdict } = decision;
  log.info({ qid: writer.id, proxied: true, verdict: verdict.action, reason: verdict.reason, ms: record.ms }, 'scanned');
  // Shadow engines may still be reading: the handle and the snapshot stay theirs until they end.
  const late = decision.late ?? Promise.resolve([]);
  void late.then((runs) => { if (decision.late) queue.recordLateRuns(record, runs.map(runRecord)); })
    .catch((err) => log.error({ err, qid: writer.id }, 'could not record late scans'))
    .finally(() => {
      handle?.close().catch(() => undefined);
      try {
        runtime.release();
      } catch (err) {
        log.error({ err, qid: writer.id }, 'could not release the engine snapshot');
      }
    });
  if (decision.reply) {
    queue.recordScan(record);
    await writer.discard().catch((err) => log.error({ err, qid: writer.id }, 'could not remove a refused message'));
    return reply(decision.reply);
  }
  const headers = verdict.headers.map(headerField).join('');
  if (verdict.action === 'quarantine') {
    const id = await queue.accept(writer, {
      sender: input.sender, recipients: input.recipients.map((address) => ({ tenant: input.tenant, address, domain: address.slice(address.lastIndexOf('@') + 1).toLowerCase(), orcpt: null, notify: null })),
      ret: null, envid: null, smtputf8: false, body8bit: true, client: input.client, helo: input.helo, authUser: null, listener: input.listener,
      trace: headers, quarantine: verdict.reason, strip: null,
    }, received.bytes, record);
    log.info({ qid: id, proxied: true, quarantine: verdict.reason }, 'quarantined');
    const text = `2.0.0 Ok: held in quarantine as ${id}`;
    return { kind: 'held', reply: { code: 250, lines: [text], raw: `250 ${text}` } };
  }
  queue.recordScan(record);
  const kept = writer.kept ? Buffer.concat(writer.kept) : null;
  return {
    kind: 'relay',
    open: () => Readable.from((async function* () {
      if (headers) yield Buffer.from(headers, 'utf8');
      yield* kept ? [kept] : createReadStream(writer.path);
    })()),
    done: () => writer.discard(),
  };
}
